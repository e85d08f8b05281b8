"""Third-party Delta readers open a table the iot-delta crate wrote.

Usage: readers.py <table directory>  (the directory holds expected.json,
written by the crate's `a_table_for_third_party_readers` test). The Python
`deltalake` package, Polars and DuckDB's delta extension must each see the
expected version's rows, per hour, and nothing of a file that was never
committed or was removed.
"""
import json
import pathlib
import sys

import deltalake
import duckdb
import duckdb_extension_delta
import polars as pl

root = pathlib.Path(sys.argv[1])
expected = json.loads((root / "expected.json").read_text())
want_hours = {h: n for h, n in expected["hours"].items()}

table = deltalake.DeltaTable(str(root))
assert table.version() == expected["version"], table.version()
# deltalake's own query engine (its pyarrow conversion needs a newer pyarrow
# than the one CI pins for the other checks).
counted = deltalake.QueryBuilder().register("t", table).execute(
    "select hour, count(*) as n, sum(case when device like 'lost%' then 1 else 0 end) as lost "
    "from t group by hour").read_all()
counted = pl.DataFrame(counted)
got = dict(zip(counted["hour"].to_list(), counted["n"].to_list()))
assert got == want_hours, ("deltalake", got)
assert counted["lost"].sum() == 0, counted

frame = pl.read_delta(str(root))
got = dict(frame.group_by("hour").len().iter_rows())
assert got == want_hours, ("polars", got)

extension = next(pathlib.Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{extension}'")
got = dict(con.sql(f"select hour, count(*) from delta_scan('{root}') group by hour").fetchall())
assert got == want_hours, ("duckdb", got)
lost = con.sql(f"select count(*) from delta_scan('{root}') where device like 'lost%'").fetchone()[0]
assert lost == 0, lost

print(f"deltalake {deltalake.__version__}, Polars {pl.__version__} and DuckDB {duckdb.__version__} "
      f"(delta extension) read version {expected['version']}: {expected['rows']} rows, per hour {want_hours}")
