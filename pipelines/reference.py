"""Print the configuration reference: every stage's options, as Markdown (kept in the README).

python -m pipelines.reference
"""

from __future__ import annotations

import argparse
import sys


def stage_option_classes() -> list[tuple[str, type]]:
    """(entry point, options class) of every stage, CommonOptions first."""
    from pipelines.common import CommonOptions
    from pipelines.cowatch import CowatchOptions
    from pipelines.embed import EmbedOptions
    from pipelines.evaluate import EvaluateOptions
    from pipelines.index import IndexOptions
    from pipelines.neighbors import NeighborsOptions
    from pipelines.nightly import NightlyOptions
    from pipelines.scrape import ScrapeOptions
    from pipelines.similar import SimilarOptions
    from pipelines.train import TrainOptions

    return [
        ("every stage", CommonOptions),
        ("pipelines.scrape", ScrapeOptions),
        ("pipelines.cowatch", CowatchOptions),
        ("pipelines.train", TrainOptions),
        ("pipelines.embed", EmbedOptions),
        ("pipelines.index", IndexOptions),
        ("pipelines.neighbors", NeighborsOptions),
        ("pipelines.evaluate", EvaluateOptions),
        ("pipelines.similar", SimilarOptions),
        ("pipelines.nightly", NightlyOptions),
    ]


def reference_markdown() -> str:
    """One Markdown table per options class: flag, default, meaning."""
    sections = []
    for entry, options_class in stage_option_classes():
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        options_class._add_argparse_args(parser)
        rows = ["| flag | default | meaning |", "|---|---|---|"]
        for action in parser._actions:
            flag = action.option_strings[0]
            default = (
                "" if action.default is None or action.default is False else f"`{action.default}`"
            )
            meaning = " ".join((action.help or "").split()).replace("|", "\\\\|")
            rows.append(f"| `{flag}` | {default} | {meaning} |")
        sections.append(f"**{entry}**\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
