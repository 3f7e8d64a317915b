"""idgen: a Snowflake-style 64-bit ID server (41-bit ms time, 10-bit worker, 12-bit sequence)."""
