"""``mimo data check``: read a whole conversation dataset through the training code and report every problem.

It does what training does (parse, tokenize with the chat template, fit to ``max_seq_length``) and decodes every
media file as the encoder ranks would, but never stops at the first problem: each unusable record is listed with
its id, then the statistics. Nothing is changed or dropped on disk.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mimo.config import MimoConfig
from mimo.data.conversations.dataset import ConversationDataset
from mimo.data.conversations.splits import conversation_datasets

__all__ = ["DataReport", "check_data"]


@dataclass
class DataReport:
    """What ``check_data`` found in one records file."""

    name: str
    path: str
    records: int = 0
    samples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    media_per_sample: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        histogram = ", ".join(f"{count} x {items}" for items, count in sorted(self.media_per_sample.items()))
        return [
            f"{self.name} ({self.path}): {self.records} records, {self.samples} usable samples, {self.tokens} tokens",
            f"  media per sample: {histogram or 'none'}",
            f"  cut to fit max_seq_length: {self.truncated}; too long, dropped: {self.dropped_too_long}; "
            f"unusable: {len(self.problems)}",
            *(f"  problem: {line}" for line in self.problems),
        ]


def check_data(cfg: MimoConfig) -> list[DataReport]:
    """One report per records file of the run (training, and validation when it is a separate file)."""
    if cfg.data.source != "conversations":
        raise ValueError(f"mimo data check reads conversation records; data.source is {cfg.data.source!r}")
    train, validation = conversation_datasets(cfg)
    reports = [_check("training", train)]
    if validation is not None:
        reports.append(_check("validation", validation))
    return reports


def _check(name: str, dataset: ConversationDataset) -> DataReport:
    index = dataset.build_index()
    report = DataReport(name=name, path=str(dataset.path), records=len(dataset.conversations),
                        truncated=index.truncated, dropped_too_long=index.dropped_too_long,
                        problems=list(index.problems))
    dataset.set_index(index, checking=True)  # every usable record, whatever data.on_bad_sample says
    for position in range(len(index.kept)):
        try:
            dataset.load_sample(position)  # decodes every media file, as the encoder ranks do
        except ValueError as error:
            report.problems.append(str(error))
            continue
        report.samples += 1
        report.tokens += index.lengths[position]
        report.media_per_sample[len(dataset.media_of(position))] += 1
    return report
