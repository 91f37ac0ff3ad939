"""Names shared by the graph passes, the custom-op library and the tests: one place, so they cannot drift."""

DOMAIN = "ai.halut"
DOMAIN_VERSION = 1

ENCODE_TREE = "HalutEncodeTree"
ENCODE_PQ = "HalutEncodePQ"
LOOKUP = "HalutLookup"

NUM_CODES = 16  # 4-bit codes: 16 prototypes per codebook
TREE_DEPTH = 4
TREE_NODES = 15  # 1 + 2 + 4 + 8 thresholds per codebook

# Conv forms: encode straight from NCHW activations (patch rows, docs/ops.md), lookup into NCHW outputs.
ENCODE_TREE_CONV = "HalutEncodeTreeConv"
ENCODE_PQ_CONV = "HalutEncodePQConv"
LOOKUP_CONV = "HalutLookupConv"
AUTO_PAD_MODES = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

ALL_OPS = (ENCODE_TREE, ENCODE_PQ, LOOKUP, ENCODE_TREE_CONV, ENCODE_PQ_CONV, LOOKUP_CONV)
