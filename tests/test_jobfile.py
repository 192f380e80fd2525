"""Job files as text: a key given twice is refused naming both lines, a misspelt key is named before other rules."""

from __future__ import annotations

import pytest

from augment.core.errors import AugmentError
from augment.runner.jobfile import load_job

HEAD = "data: d\ngenerator: g\nsegmenter: s\noutput: o\n"


def refusal(tmp_path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AugmentError) as info:
        load_job(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message[len(str(path)) + 2:]


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    text = HEAD + "classes: {car: 2}\nfilter:\n  min_miou: 0.5\nseed: 1\nfilter:\n  min_miou: 0.1\n"
    assert refusal(tmp_path, text) == ("key 'filter' is given twice (lines 6 and 9); keep one (YAML would silently "
                                       "use the last)")


def test_a_key_given_twice_at_any_depth_and_in_flow_style(tmp_path):
    nested = HEAD + "classes: {car: 2}\nresources:\n  workers: 1\n  batch_size: 4\n  workers: 2\n"
    assert refusal(tmp_path, nested).startswith("key 'workers' is given twice (lines 7 and 9)")
    flow = HEAD + "classes: {car: 2, bus: 1, car: 3}\n"
    assert refusal(tmp_path, flow).startswith("key 'car' is given twice (both on line 5)")
    json_text = ('{"data": "d", "generator": "g", "segmenter": "s", "output": "o",\n "classes": {"car": 1},\n'
                 ' "seed": 1,\n "seed": 2}')
    assert refusal(tmp_path, json_text, "job.json").startswith("key 'seed' is given twice (lines 3 and 4)")


def test_a_merged_key_may_be_overridden(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(HEAD + "classes: {car: 2}\nbase: &base {workers: 1, batch_size: 4}\n")
    assert "unknown key 'base'" in refusal(tmp_path, path.read_text())  # the anchor itself is no job key
    path.write_text(HEAD + "classes: {car: 2}\nresources:\n  <<: {workers: 1, batch_size: 4}\n  workers: 2\n")
    cfg = load_job(str(path))
    assert (cfg.resources.workers, cfg.resources.batch_size) == (2, 4)


@pytest.mark.parametrize("text, expected", [
    (HEAD + "clases: {car: 2}\n", "unknown key 'clases' (did you mean 'classes'?)"),
    (HEAD + "balnce: {total: 4}\n", "unknown key 'balnce' (did you mean 'balance'?)"),
    (HEAD.replace("segmenter", "segmentr") + "classes: {car: 2}\n",
     "unknown key 'segmentr' (did you mean 'segmenter'?)"),
    (HEAD + "classes: {car: 2}\nfilter: {min_mIoU: 0.2}\n", "unknown key 'filter.min_mIoU' (did you mean 'min_miou'?)"),
    (HEAD, "give exactly one of 'classes' (quotas per class) and 'balance' ({total: N}), got neither"),
])
def test_a_misspelt_key_is_named_before_the_classes_or_balance_rule(tmp_path, text, expected):
    assert refusal(tmp_path, text) == expected
