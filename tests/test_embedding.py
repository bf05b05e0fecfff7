"""Word vectors learnt from the training posts (lstm_vs_gru.embedding), the embed stage, and training starting
its embedding from them (model.embedding_init: lsa)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lstm_vs_gru import artifacts, training
from lstm_vs_gru.embedding import INIT_STD, lsa_vectors
from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import load
from lstm_vs_gru.tokenizer import offsets_from_lengths
from stages import embed as embed_stage
from stages import train as train_stage
from tests.test_train import NUM_WORDS, write_padded, write_params

# Two topics over word ids 1-20: space (1-10) and hockey (11-20); id 21 appears in every post.
SPACE, HOCKEY, EVERYWHERE = range(1, 11), range(11, 21), 21


def topic_posts(n_posts: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ids and offsets: each post draws 12 words from one topic, plus the word found everywhere."""
    rng = np.random.default_rng(seed)
    posts = [np.append(rng.choice(list(SPACE if i % 2 else HOCKEY), 12), EVERYWHERE) for i in range(n_posts)]
    return np.concatenate(posts).astype(np.int32), offsets_from_lengths([len(post) for post in posts])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_words_of_one_topic_get_close_vectors_and_the_two_topics_apart() -> None:
    ids, offsets = topic_posts()
    vectors, explained = lsa_vectors(ids, offsets, num_words=30, dim=4)
    assert vectors.shape == (30, 4) and vectors.dtype == np.float32
    assert not vectors[0].any()  # padding
    centre = {topic: vectors[list(topic)].mean(axis=0) for topic in (SPACE, HOCKEY)}
    for own, other in ((SPACE, HOCKEY), (HOCKEY, SPACE)):
        for word in own:
            assert cosine(vectors[word], centre[own]) > 0.5 and cosine(vectors[word], centre[other]) < 0.0, word
    assert vectors.std() == pytest.approx(INIT_STD, rel=0.01)
    assert 0.0 < explained <= 1.0


def test_the_same_posts_give_the_same_vectors() -> None:
    ids, offsets = topic_posts()
    first, _ = lsa_vectors(ids, offsets, num_words=30, dim=4)
    second, _ = lsa_vectors(ids, offsets, num_words=30, dim=4)
    np.testing.assert_array_equal(first, second)


def test_a_corpus_too_small_for_the_dimension_leaves_the_last_columns_zero() -> None:
    ids, offsets = topic_posts(n_posts=5)
    vectors, _ = lsa_vectors(ids, offsets, num_words=30, dim=16)
    assert vectors[:, :4].any(axis=0).all() and not vectors[:, 4:].any()  # rank min(5 posts, 30 words) - 1


def write_tokens(directory: Path) -> None:
    ids, offsets = topic_posts()
    artifacts.write_npz(directory / artifacts.tokens_path("train"), ids=ids, offsets=offsets,
                        labels=(np.arange(len(offsets) - 1) % 2).astype(np.int32),
                        groups=np.array(["rec.sport.hockey", "sci.space"]), vocabulary_sha256=np.array("0" * 64))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_params(tmp_path, model={"embedding_init": "lsa"})
    write_padded(tmp_path)
    write_tokens(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_embed_stage_writes_the_vectors_with_their_vocabulary(project: Path) -> None:
    embed_stage.main()
    written = artifacts.read_npz(artifacts.VECTORS)
    params = load()
    assert written["vectors"].shape == (NUM_WORDS, params.model.embedding_dim)
    assert str(written["vocabulary_sha256"]) == "0" * 64
    tokens = artifacts.read_npz(artifacts.tokens_path("train"))
    expected, explained = lsa_vectors(tokens["ids"], tokens["offsets"], NUM_WORDS, params.model.embedding_dim)
    np.testing.assert_array_equal(written["vectors"], expected)
    metrics = artifacts.read_json(artifacts.metrics_path("embed"))
    assert (metrics["words"], metrics["dim"], metrics["explained_variance"]) == (
        NUM_WORDS, params.model.embedding_dim, round(explained, 6))


@pytest.mark.parametrize("trainer", ["fused", "keras"])
def test_training_starts_from_the_vectors(project: Path, trainer: str) -> None:
    """Adam leaves the rows of words no training post holds where they started (their gradient is zero),
    so after training those rows are still the embed stage's vectors."""
    import keras

    write_params(project, model={"embedding_init": "lsa"}, train={"trainer": trainer})
    write_padded(project, top_id=NUM_WORDS // 2)  # ids 25-49 never occur
    embed_stage.main()
    train_stage.main(["gru"])
    trained = keras.models.load_model(artifacts.model_path("gru", 0)).get_layer("embedding").get_weights()[0]
    start = artifacts.read_npz(artifacts.VECTORS)["vectors"]
    np.testing.assert_array_equal(trained[NUM_WORDS // 2:], start[NUM_WORDS // 2:])
    assert not np.array_equal(trained[1:NUM_WORDS // 2], start[1:NUM_WORDS // 2])
    metrics = artifacts.read_json(artifacts.run_metrics_path("gru", 0))
    assert metrics["trained_with"] != "keras" if trainer == "fused" else metrics["trained_with"] == "keras"


def test_uniform_reads_no_vectors(project: Path) -> None:
    write_params(project)  # embedding_init: uniform, the lab's
    assert training.initial_embedding(load(), training.load_inputs(load())[0]) is None  # no data/vectors.npz


def test_missing_vectors_fail_in_one_line_naming_the_stage(project: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        train_stage.main(["gru"])
    assert capsys.readouterr().err.strip() == ("error: data/vectors.npz: not found (run `dvc repro embed`)")


def test_vectors_of_another_shape_are_refused(project: Path) -> None:
    embed_stage.main()
    write_params(project, model={"embedding_init": "lsa", "embedding_dim": 12})
    with pytest.raises(UserError, match=r"shape \(50, 8\).*expected float32 \(50, 12\).*dvc repro embed"):
        training.initial_embedding(load(), training.load_inputs(load())[0])


def test_vectors_of_another_vocabulary_are_refused(project: Path) -> None:
    embed_stage.main()
    padded = dict(artifacts.read_npz(artifacts.padded_path("train")))
    artifacts.write_npz(artifacts.padded_path("train"), **{**padded, "vocabulary_sha256": np.array("1" * 64)})
    with pytest.raises(UserError, match="another vocabulary"):
        training.initial_embedding(load(), training.load_inputs(load())[0])


def test_the_report_names_the_start_of_the_embedding() -> None:
    from lstm_vs_gru.model import describe

    lab = load(Path(__file__).resolve().parents[1] / "params.yaml").model
    assert describe(lab, 20).startswith("Embedding → LSTM/GRU → ")
    assert describe(replace(lab, embedding_init="lsa"), 20).startswith(
        "Embedding (from the corpus's LSA vectors) → LSTM/GRU → ")
