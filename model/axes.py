"""Logical axis names carried by every parameter (and optionally activations) of the model.

Each `nnx.Param` of `SeedOssForCausalLM` stores a tuple of these names, one per array dimension,
in the Variable metadata key `out_sharding` (flax 0.12's standard key, read by
`nnx.get_partition_spec`). Parameters are created with `eager_sharding=False`, so building the
model never needs a mesh; `ppp_jax.model.sharding` maps the names onto mesh axes with a rules
table. The names are logical, never mesh axes.
"""

SHARDING_METADATA_KEY = "out_sharding"

# Parameter axes.
VOCAB = "vocab"  # V
EMBED = "embed"  # D
HEADS = "heads"  # N
KV_HEADS = "kv_heads"  # K
HEAD_DIM = "head_dim"  # H
MLP = "mlp"  # F
LAYERS = "layers"  # L, the leading axis of every stacked decoder-layer parameter

# Activation axes (for with_sharding_constraint through the rules table; optional).
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_HEADS = "activation_heads"
ACT_KV_HEADS = "activation_kv_heads"
ACT_MLP = "activation_mlp"
ACT_VOCAB = "activation_vocab"

PARAM_AXES = (VOCAB, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS)
