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

# Activation axes, pinned with `sharding.constrain` through the same rules table inside
# `sharding.using_mesh` (a no-op outside it).
ACT_BATCH = "activation_batch"  # B
ACT_LENGTH = "activation_length"  # T: queries, residual stream, MLP hidden, logits
ACT_KV_LENGTH = "activation_kv_length"  # S: keys/values (kept whole for context parallelism)
ACT_EMBED = "activation_embed"  # D
ACT_HEADS = "activation_heads"  # N
ACT_KV_HEADS = "activation_kv_heads"  # K
ACT_HEAD_DIM = "activation_head_dim"  # H
ACT_MLP = "activation_mlp"  # F
ACT_VOCAB = "activation_vocab"  # V

# Named layouts of the activations the model constrains.
ACT_BTD = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # residual stream, embeddings, lm_head input
ACT_BTNH = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_HEAD_DIM)  # queries, attention output
ACT_BSKH = (ACT_BATCH, ACT_KV_LENGTH, ACT_KV_HEADS, ACT_HEAD_DIM)  # keys, values
ACT_BTS = (ACT_BATCH, ACT_LENGTH, ACT_KV_LENGTH)  # attention mask
ACT_BTF = (ACT_BATCH, ACT_LENGTH, ACT_MLP)  # MLP hidden
ACT_BTV = (ACT_BATCH, ACT_LENGTH, ACT_VOCAB)  # logits
ACT_BT = (ACT_BATCH, ACT_LENGTH)  # token ids, positions, segment ids

PARAM_AXES = (VOCAB, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS)
