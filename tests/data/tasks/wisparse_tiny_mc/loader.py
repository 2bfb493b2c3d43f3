"""The task's data: items.jsonl beside this file, as a datasets.DatasetDict with one `test` split (no hub)."""

import json
from pathlib import Path

import datasets


def load(**kwargs) -> datasets.DatasetDict:
    lines = (Path(__file__).with_name("items.jsonl")).read_text().splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(x) for x in lines if x.strip()])})
