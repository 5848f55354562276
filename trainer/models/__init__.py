"""The networks: streams (a ResNet per stream with its head), pretrained (their starting weights), fusion
(of the two streams' outputs, and ``TwoStream``), build (the network a ``ModelConfig`` describes) and losses.

Each module is imported by its own name (``from trainer.models.streams import spatial_stream``); this
package re-exports nothing.
"""
