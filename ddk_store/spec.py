"""Every constant of the on-disk store format, defined once (see docs/store-format.md, the normative spec)."""

from __future__ import annotations

import re

FORMAT_NAME = "ddk-teacher-store"
#: Major.minor. Readers MUST refuse a different major version; minor bumps only add optional fields (1.1 added the
#: encoding ENC_IDSORT_Q8_TAIL and its array ARR_TOPK_TAIL; a reader of 1.1 reads 1.0 stores).
FORMAT_VERSION = "1.2"
FORMAT_MAJOR = 1
#: (format 1.2) The encoding ENC_SAMPLED and the root field ``sampling`` it needs: a store with them declares >= 1.2.
SAMPLED_SINCE = (1, 2)
#: (format 1.1) The encoding ENC_IDSORT_Q8_TAIL and its array ARR_TOPK_TAIL.
TAIL_SINCE = (1, 1)
#: (format 1.2) From this version on, the data arrays are sharded: one stored object per write unit and array, the
#: chunks inside it indexed (zarr's sharding_indexed codec). Older stores keep one object per chunk.
SHARDED_SINCE = (1, 2)

#: Key of the root group attribute holding the store metadata document.
ROOT_ATTR = "ddk"
#: Key of the group attribute describing a (domain, split) group.
GROUP_ATTR = "ddk_group"
#: The only codecs a store may declare (Zarr v3 spec codecs), at the top level and inside a shard (chunk and index
#: codecs); readers refuse any other before decoding.
ALLOWED_CODECS = frozenset({"bytes", "blosc", "crc32c", "sharding_indexed"})
#: Root attribute holding a random token of the process that created the store (detects two creators racing).
CLAIM_ATTR = "ddk_claim"
#: Group of stage 1's packed rows (docs/store-format.md, section 8); it may exist before the root document does.
PACK_PREFIX = "_pack"

STATUS_WRITING = "writing"
STATUS_COMPLETE = "complete"
STATUSES = (STATUS_WRITING, STATUS_COMPLETE)

SPLIT_TRAIN = "train"
SPLIT_HELDOUT = "heldout"
SPLITS = (SPLIT_TRAIN, SPLIT_HELDOUT)

# Array names inside each <domain>/<split> group.
ARR_TOKENS = "tokens"  # [N, T]       packed token ids
ARR_TOPK_IDS = "topk_ids"  # [N, P, K]    teacher top-k token ids (encoded, see ENCODINGS)
ARR_TOPK_LOGPROBS = "topk_logprobs"  # [N, P, K]    teacher top-k log-probabilities (encoded)
ARR_TARGET_LOGPROBS = "target_logprobs"  # [N, P]  teacher log-prob of the realized next token, float32
ARR_TOPK_TAIL = "topk_tail"  # [N, P]  log of the teacher's exact mass outside the stored entries (some encodings)
ARR_UNITS = "units"  # [U, 1 + number of data arrays] uint32: done flag, then crc32 per array
#: The data arrays of every group, and the order of the crc32 columns in ARR_UNITS (column 0 is the done flag). An
#: encoding may add arrays (ARR_TOPK_TAIL): they come after these, in the encoding's order (schema.data_arrays).
CHECKSUMMED_ARRAYS = (ARR_TOKENS, ARR_TOPK_IDS, ARR_TOPK_LOGPROBS, ARR_TARGET_LOGPROBS)
DATA_ARRAYS = CHECKSUMMED_ARRAYS
UNIT_DONE = 1

# Top-k encodings. Each names how topk_ids / topk_logprobs (and its own arrays) are stored; readers refuse unknown
# names. The registry of their code is ddk_store/encodings.
#: ids in rank order (descending log-prob), log-probs as float16 in rank order.
ENC_RANK_F16 = "topk-rank-f16"
#: per position, entries sorted by ascending token id; ids stored as deltas (first = id itself);
#: log-probs in the same order, quantized: stored v means log-prob = -v / logprob_scale (uint8, saturating).
ENC_IDSORT_Q8 = "topk-idsort-q8"
#: (format 1.1) entries below a probability floor dropped, the rest as ENC_IDSORT_Q8 (absent slots last), plus
#: ARR_TOPK_TAIL: the exact tail, to which decoding rescales (ddk_store/encodings/floor_tail.py).
ENC_IDSORT_Q8_TAIL = "topk-idsort-q8-tail"
#: (format 1.2) N draws per position from the teacher's top-k plus its tail (Random-Sampling KD): the sampled ids as
#: deltas with uint8 draw counts, absent slots last; the tail's draws are N minus their sum (encodings/sampled.py).
ENC_SAMPLED = "topk-sampled"
ENCODINGS = (ENC_IDSORT_Q8_TAIL, ENC_IDSORT_Q8, ENC_RANK_F16, ENC_SAMPLED)
DEFAULT_ENCODING = ENC_IDSORT_Q8_TAIL
#: Default quantization scale of ENC_IDSORT_Q8 (and of a store whose encoding has none): steps of 1/16 nat, max
#: rounding error 1/32 nat. ENC_IDSORT_Q8_TAIL's default is 32 (its encoding's default_scale).
DEFAULT_LOGPROB_SCALE = 16
#: Draws per position of ENC_SAMPLED: default, and the most a uint8 count holds with 255 left free as its fill value.
DEFAULT_SAMPLES = 64
MAX_SAMPLES = 254

#: Largest stored quantized value (log-probs below -Q8_MAX/scale saturate there); Q8_FILL marks missing data.
Q8_MAX = 254
Q8_FILL = 255

#: Valid domain names (they become path components). Splits are fixed (SPLITS).
DOMAIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
#: Names the pattern allows that a store's own files take at its root (a domain's group would collide with them).
RESERVED_DOMAIN_NAMES = frozenset({"zarr.json"})

#: Vocabularies smaller than this store token ids as uint16 (65535 stays free as fill), larger ones as uint32.
UINT16_VOCAB_LIMIT = 65535
