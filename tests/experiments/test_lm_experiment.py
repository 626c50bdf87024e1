"""The language-model experiment end to end at its tiny presets, on a small text file: the
on-policy rows continue their warm start, and the store students of both tails are separate runs."""
import json
import random

import pytest

from conftest import run
from distill.checkpoints import load_checkpoint
from distill.teachers.teacher import module_id

WORDS = ("the a of and to in is was he she it that his her with as for on at by this had not but from be "
         "king house river stone light night water green small great old young long dark morning").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "." for _ in range(3000))
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(text)
    return path


def _records(out):
    return json.loads((out / "results.json").read_text())


def test_onpolicy_rows_continue_the_warm_start_of_their_seed(capsys, tmp_path, corpus):
    code, out, err = run(capsys, "reproduce", "lm", "--preset", "onpolicy-tiny", "--data", corpus,
                         "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    recs = _records(tmp_path / "o")
    warm = [r for r in recs if r["model"] == "warm-start"]
    rows = [r for r in recs if r["model"] not in ("teacher", "warm-start")]
    assert len(warm) == 1 and len(rows) == 6
    key = warm[0]["checkpoint"].split("/")[-2].rsplit("-", 1)[-1]
    warm_model = load_checkpoint(warm[0]["checkpoint"])[0]
    for r in rows:
        assert r["warm_start"] == key and f"-from-{key}-" in r["checkpoint"]
        side = json.loads((tmp_path / "o" / "stages" / r["checkpoint"].split("/")[-2] / "model.json").read_text())
        assert side["init_weights"] == module_id(warm_model)  # it started from the warm start's weights
    table = (tmp_path / "o" / "results.md").read_text()
    assert "| warm-start | 1 |" in table and "test perplexity" in table


def test_store_students_of_both_tails_are_separate_runs(capsys, tmp_path, corpus):
    code, out, err = run(capsys, "reproduce", "lm", "--preset", "tiny", "--data", corpus, "--no-select",
                         "--store-tail", "renormalize", "bucket", "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    recs = {r["model"]: r for r in _records(tmp_path / "o")}
    plain, bucket = recs["student-top4"], recs["student-top4-bucket"]
    assert plain["checkpoint"] != bucket["checkpoint"] and bucket["tail"] == "bucket" and "tail" not in plain
    assert plain["test_nll"] != bucket["test_nll"]


def test_store_k_alone_trains_no_store_student(capsys, tmp_path, corpus):
    code, out, err = run(capsys, "reproduce", "lm", "--preset", "tiny", "--data", corpus, "--no-select",
                         "--students", "student-hard", "--store-k", "--out", tmp_path / "o", "--no-progress")
    assert code == 0, err
    assert {r["model"] for r in _records(tmp_path / "o")} == {"teacher", "student-hard"}


def test_the_gap_is_reported_per_seed_with_the_spread():
    from distill.experiments.lm import seed_spread, summary

    recs = [dict(model="teacher", seed=0, test_nll=4.0)]
    recs += [dict(model="student-hard", seed=s, test_nll=n) for s, n in enumerate((5.0, 5.2, 5.1))]
    recs += [dict(model="student-forward-kl", seed=s, test_nll=n) for s, n in enumerate((4.5, 4.6, 4.9))]
    text = summary(recs)
    # gaps (5.0-4.5)/1.0, (5.2-4.6)/1.2, (5.1-4.9)/1.1: 50, 50, 18 %; the means differ by 0.433 > std 0.208
    assert "per seed (0, 1, 2): 50 / 50 / 18 %" in text and "beyond the larger seed spread (0.208)" in text
    close = recs[:4] + [dict(model="student-forward-kl", seed=s, test_nll=n) for s, n in enumerate((4.8, 5.4, 4.9))]
    assert "within the larger seed spread (0.321)" in summary(close)  # 5.1 - 5.033 = 0.067
    assert seed_spread(recs[:3] + recs[4:5], "student-forward-kl", 4.0) == ""
    # a distilled seed that did not finish: the headline pairs the seeds both students have
    two = recs[:4] + recs[4:6]
    assert "**50 %**" in summary(two) and "per seed (0, 1): 50 / 50 %" in summary(two)  # fewer than two paired seeds
