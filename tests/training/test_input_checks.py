"""Which training queries can train, and the one-line refusals, on line splits with known positives."""

import dataclasses
import logging
import subprocess
import sys

import numpy as np
import pytest

from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.training.config import TrainConfig
from tf_netvlad.training.input_checks import check_training_input, no_positive_message, trainable_queries

# the records keep the logger name they had in `mining` (the CLI prints it)
LOGGER = "tf_netvlad.training.mining"


def _line_split(num_db=40, query_x=(0.0, 50.0, 100.0, 1000.0), spacing=5.0, name="line"):
    """db images every `spacing` m on the x axis, queries at `query_x` (the last has no positive)."""
    db_utm = np.stack([np.arange(num_db) * spacing, np.zeros(num_db)], 1)
    q_utm = np.stack([np.asarray(query_x, float), np.zeros(len(query_x))], 1)
    return PlaceSplit(name=name, db_paths=tuple(f"db{i}.jpg" for i in range(num_db)), db_utm=db_utm,
                      query_paths=tuple(f"q{i}.jpg" for i in range(len(query_x))), query_utm=q_utm)


def _cfg(**overrides):
    return dataclasses.replace(TrainConfig(), **dict(dict(batch_size=2, num_negatives=3, exclude_trivial_m2=None),
                                                     **overrides))


def test_trainable_queries_skips_queries_without_a_positive_and_warns(caplog):
    split = _line_split()  # query 3 (x = 1000 m) has no positive
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        positives, non_negatives, valid = trainable_queries(split, num_negatives=3)
    assert valid.dtype == np.int64 and list(valid) == [0, 1, 2]
    # query 1 at x=50: positives (<= 10 m) are db 8..12; non-negatives (<= 25 m) db 5..15
    assert sorted(positives[1]) == [8, 9, 10, 11, 12] and sorted(non_negatives[1]) == list(range(5, 16))
    assert len(positives[3]) == 0
    assert [r.name for r in caplog.records] == [LOGGER]
    assert caplog.records[0].getMessage() == "1 of 4 training queries have no positive within 10 m and are skipped."


def test_trainable_queries_errors_name_the_split_and_num_negatives():
    with pytest.raises(ValueError, match="Training split 'line': none of its 2 queries has a database image "
                                         "within 10 m"):
        trainable_queries(_line_split(query_x=(1000.0, 2000.0)), num_negatives=3)
    few = _line_split(num_db=8)  # 8 db images over 35 m: query 0 has only 2 beyond 25 m
    with pytest.raises(ValueError, match=r"^num_negatives=10 negatives per query are needed but query 0 has only 2 "
                                         r"database images beyond 25 m \(1 queries are short\)"):
        trainable_queries(few, num_negatives=10)


def test_no_positive_message_points_at_the_trivial_rule_only_when_it_removed_every_positive():
    on_db = _line_split(query_x=(0.0, 50.0))  # each query stands on a db image; the others are 5, 10 m away
    text = no_positive_message(on_db, "split 'line'", exclude_trivial_m2=100.0)
    assert text.startswith("Training split 'line': none of its 2 queries has a database image within 10 m "
                           "(sqrt of nonTrivPosDistSqThr = 100 m²) and beyond 10 m (trivial-positive rule), so "
                           "there is nothing to train on (40 database images).")
    assert text.endswith("train with --exclude-trivial-m2 none (exclude_trivial_m2=None).")
    far = _line_split(query_x=(1000.0,))
    assert no_positive_message(far, "split 'line'", flag=" (--dataset)") == (
        "Training split 'line' (--dataset): its only query has no database image within 10 m (sqrt of "
        "nonTrivPosDistSqThr = 100 m²), so there is nothing to train on (40 database images). Check the "
        "split's UTM positions (easting, northing in metres) and radii.")


def test_check_training_input_returns_the_training_queries():
    np.testing.assert_array_equal(check_training_input(_cfg(), _line_split()), [0, 1, 2])


@pytest.mark.parametrize("overrides, query_x, message", [
    (dict(batch_size=4), (0.0, 50.0, 100.0, 1000.0),
     "Training split 'train.mat' (--dataset): only 3 of its 4 queries have a database image within 10 m, "
     "fewer than one batch of 4 tuples. Lower --batch-size (batch_size) or add training queries."),
    (dict(num_negatives=39), (0.0, 50.0, 100.0, 1000.0),
     "Training split 'train.mat' (--dataset): query 1 has only 29 database images beyond 25 m, fewer than the "
     "39 negatives a tuple needs (3 queries are short). Lower --num-negatives (num_negatives) or use a larger "
     "database."),
    (dict(batch_size=1), (1000.0, 2000.0),
     "Training split 'train.mat' (--dataset): none of its 2 queries has a database image within 10 m"),
])
def test_check_training_input_names_the_file_the_cause_and_the_flag(overrides, query_x, message):
    with pytest.raises(ValueError) as error:
        check_training_input(_cfg(**overrides), _line_split(query_x=query_x), sources=("train.mat", None))
    assert str(error.value).startswith(message)


def test_check_training_input_checks_the_batch_before_the_negatives():
    # both fail (1 training query < batch 2; 29 db images beyond 25 m < 39): the batch is named
    with pytest.raises(ValueError, match="fewer than one batch of 2 tuples"):
        check_training_input(_cfg(num_negatives=39), _line_split(query_x=(50.0, 1000.0)))


def test_validation_without_any_positive_fails_and_a_partial_one_is_logged(caplog):
    train_split = _line_split()
    with pytest.raises(ValueError, match=r"^Validation split 'val.csv' \(--val\): its only query has no database "
                                         r"image within 25 m \(posDistThr\), so recall@N cannot be measured\."):
        check_training_input(_cfg(), train_split, _line_split(query_x=(3000.0,), name="v"), (None, "val.csv"))
    with pytest.raises(ValueError, match="^Validation split 'v' .*none of its 2 queries has a database image"):
        check_training_input(_cfg(), train_split, _line_split(query_x=(3000.0, 4000.0), name="v"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_training_input(_cfg(), train_split, _line_split(query_x=(0.0, 3000.0), name="v"), (None, "val.csv"))
    assert [r.name for r in caplog.records] == [LOGGER]
    assert caplog.records[0].getMessage() == ("Validation split 'val.csv': 1 of 2 queries have no database image "
                                              "within 25 m; recall@N leaves them out.")


def test_input_checks_do_not_import_tensorflow():
    code = ("import sys\n"
            "import tf_netvlad.training.input_checks\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
