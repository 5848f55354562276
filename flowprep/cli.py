"""``flowprep`` command line: one sub-command per stage, each defined next to the code it drives."""

from __future__ import annotations

import click

from flowprep import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="flowprep")
def main() -> None:
    """Videos -> dense optical flow (TV-L1 or Farneback) -> quantized uint8 HDF5 shards.

    \b
    Typical use:
      flowprep extract --videos ucf101/ --out shards/ --class-index classInd.txt
      flowprep verify shards/
    """
