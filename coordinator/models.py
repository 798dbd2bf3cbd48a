"""Tables of the coordinator (SQLAlchemy 2). Times are epoch seconds from
the injected clock; 256-bit amounts (wei) are decimal strings; roots,
signatures and job inputs are raw bytes."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


# Leaf (and so job) status: the first five are the protocol's
# (ARCHITECTURE §5); `rejected` marks a leaf the coordinator will not post
# (bad signature, node no longer staked).
PENDING, POSTED, DISPUTED, FINAL, INVALID, REJECTED = "pending", "posted", "disputed", "final", "invalid", "rejected"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # 16 bytes, hex
    kind: Mapped[str] = mapped_column(String(16))                    # "chat" | "embedding"
    model: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[int] = mapped_column(Integer)
    model_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    input: Mapped[bytes] = mapped_column(LargeBinary)                # JobInput bytes, posted as calldata
    seed: Mapped[str] = mapped_column(String(20), default="0")       # up to 2^64 - 1
    # engine output (ints) + finish reason. Deferred: an embedding is a few hundred ints,
    # ~14 KB as Python objects, and the poster, the finalizer and proofs load jobs
    # by the hundred without needing it (loading it made the process grow).
    result: Mapped[dict] = mapped_column(JSON, deferred=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    consensus: Mapped[int] = mapped_column(Integer, default=1)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)

    leaves: Mapped[list["Leaf"]] = relationship(back_populates="job", order_by="Leaf.id")

    @property
    def primary(self) -> "Leaf":
        """The leaf whose answer the client got (the majority in consensus mode)."""
        return next(leaf for leaf in self.leaves if leaf.agrees)


class Leaf(Base):
    __tablename__ = "leaves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    node: Mapped[str] = mapped_column(String(42))
    input_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    output_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    agrees: Mapped[bool] = mapped_column(Boolean, default=True)      # same output root as the answer served
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    batch_pk: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), nullable=True, index=True)
    leaf_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)

    job: Mapped[Job] = relationship(back_populates="leaves")
    batch: Mapped["Batch | None"] = relationship(back_populates="leaves")


# Batch states: prepared (tx signed and recorded, maybe not sent) -> sent ->
# posted (receipt recorded) -> final; failed: the tx can never be mined
# (reverted, or its nonce went to another tx), its leaves were released.
# A reorganisation moves a batch back: final -> posted when its finalize
# left the canonical chain, posted/final -> sent when its posting did (the
# same signed bytes are broadcast again: same content, same leaves).
PREPARED, SENT, BATCH_POSTED, BATCH_FINAL, FAILED = "prepared", "sent", "posted", "final", "failed"


class Batch(Base):
    """One batch, identified by its posting transaction (tx_hash) and content
    (root); chain_batch_id is only the id the canonical chain gives it now: a
    reorganisation can drop it (None) or mine the same transaction under
    another id."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chain_batch_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    state: Mapped[str] = mapped_column(String(16), default=PREPARED, index=True)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    leaf_count: Mapped[int] = mapped_column(Integer)
    nonce: Mapped[int] = mapped_column(Integer)
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    raw_tx: Mapped[bytes] = mapped_column(LargeBinary)             # re-broadcast as is after a crash
    block_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deadline: Mapped[int | None] = mapped_column(Integer, nullable=True)  # chain timestamp
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    posted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finalized_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The block that holds the posting (checked against the canonical chain).
    block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    # Our finalize transaction, recorded before it is sent (re-sent when a
    # reorganisation drops it), and the block that finalized the batch.
    finalize_nonce: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finalize_tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    finalize_raw_tx: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    finalize_block: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finalize_block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    reposts: Mapped[int] = mapped_column(Integer, default=0)   # times its posting left the chain and was re-sent

    leaves: Mapped[list[Leaf]] = relationship(back_populates="batch", order_by="Leaf.leaf_index")


class Node(Base):
    __tablename__ = "nodes"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(256))
    model_ids: Mapped[list] = mapped_column(JSON, default=list)
    stake_wei: Mapped[str] = mapped_column(String(80), default="0")
    staked: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16), default="registry")
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_rate: Mapped[float] = mapped_column(Float, default=0.0)
    failures: Mapped[int] = mapped_column(Integer, default=0)        # consecutive
    ejected_until: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    prefix: Mapped[str] = mapped_column(String(16))                 # shown in listings
    rate_limit_rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class Usage(Base):
    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True, index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_wei: Mapped[str] = mapped_column(String(80))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class ChainCursor(Base):
    """How far the event watcher has read (per event stream)."""

    __tablename__ = "chain_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    block: Mapped[int] = mapped_column(Integer)


class ChainBlock(Base):
    """Hashes of the newest blocks the coordinator derived state from
    (opinfer.chain.reorg.HeadTracker): how a reorganisation is detected."""

    __tablename__ = "chain_blocks"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))
