"""Word vectors learnt from the training posts alone, without their labels: latent semantic analysis (LSA) of the
posts' TF-IDF matrix. Under `model.embedding_init: lsa` the classifier's embedding starts from them instead of
Keras's random uniform values (stages/embed.py writes them, lstm_vs_gru.training loads them).
scikit-learn and NumPy only: no TensorFlow."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# The spread (standard deviation) the vectors are scaled to, the one measured (bench/README.md, "Word vectors
# from the corpus"); Keras's uniform(-0.05, 0.05) start has 0.029. The SVD's own scale depends on the corpus.
INIT_STD = 0.05
# Power iterations of the randomized SVD: scikit-learn's default for few components, enough for a stable basis.
SVD_ITERATIONS = 7


def term_matrix(ids: np.ndarray, offsets: np.ndarray, num_words: int) -> sp.csr_matrix:
    """The training posts' TF-IDF matrix (posts × word ids), sublinear tf as the `baseline` stage uses it."""
    from sklearn.feature_extraction.text import TfidfTransformer

    n_posts = len(offsets) - 1
    posts = np.repeat(np.arange(n_posts), np.diff(offsets))
    counts = sp.csr_matrix((np.ones(len(ids)), (posts, ids)), shape=(n_posts, num_words))
    return TfidfTransformer(sublinear_tf=True).fit_transform(counts)


def lsa_vectors(ids: np.ndarray, offsets: np.ndarray, num_words: int, dim: int,
                seed: int = 0) -> tuple[np.ndarray, float]:
    """(num_words, dim) float32 word vectors and the share of the TF-IDF variance they keep.

    Row w is word id w's coordinates in the top singular directions of the TF-IDF matrix (right singular
    vectors × singular values), centred and scaled to INIT_STD. A corpus too small for `dim` directions leaves
    the last columns zero; id 0 (padding, never a word) gets a zero row."""
    from sklearn.decomposition import TruncatedSVD

    tfidf = term_matrix(ids, offsets, num_words)
    rank = min(dim, min(tfidf.shape) - 1)
    svd = TruncatedSVD(rank, algorithm="randomized", n_iter=SVD_ITERATIONS, random_state=seed).fit(tfidf)
    vectors = np.zeros((num_words, dim))
    vectors[:, :rank] = (svd.components_ * svd.singular_values_[:, None]).T
    vectors -= vectors.mean(axis=0)
    spread = vectors.std()
    if spread > 0:
        vectors *= INIT_STD / spread
    vectors[0] = 0.0
    return vectors.astype(np.float32), float(svd.explained_variance_ratio_.sum())
