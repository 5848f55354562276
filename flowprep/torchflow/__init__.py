"""torchflow"""
