"""Names of the columns the stages add to the normalised raw table. They carry a `__` prefix, and
a user column of one of these names is refused by the preflight (`RESERVED_COLUMNS`), so no
user column is ever silently replaced. The group and time columns travel as `__<name>`."""

ROW_COLUMN = "__row"  # 0-based position in the source file
TARGET_COLUMN = "__y"  # 1 = positive class, 0 = the other
ID_COLUMN = "__id"  # the --id column's value, or the source row position
HASH_COLUMN = "__hash"  # 8-byte hash of the row's normalised feature values (row_hashes)
SPLIT_COLUMN = "__split"
HALF_COLUMN = "__half"  # "stop" or "tune" on validation rows, "" elsewhere
COMPONENT_NAME = "__component"  # the split's name for a linked-row component; kept reserved

RESERVED_COLUMNS = (
    ROW_COLUMN,
    TARGET_COLUMN,
    ID_COLUMN,
    HASH_COLUMN,
    SPLIT_COLUMN,
    HALF_COLUMN,
    COMPONENT_NAME,
)
