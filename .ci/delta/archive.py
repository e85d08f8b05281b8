"""Third-party Delta readers open a hub's archive and agree with the hub.

Usage: archive.py <archive root> <scored rows the hub archived>

The Python `deltalake` package, Polars and DuckDB's delta extension each read
the `scored` and `anomalies` tables through their Delta logs: every reader
must count exactly the hub's scored rows, no (gateway, incarnation, seq,
device, metric, ts) key twice, and the same anomaly events as the others.
"""
import pathlib
import sys

import deltalake
import duckdb
import duckdb_extension_delta
import polars as pl

root = pathlib.Path(sys.argv[1])
want_scored = int(sys.argv[2])
KEY = "gateway, incarnation, seq, device, metric, ts"

extension = next(pathlib.Path(duckdb_extension_delta.__file__).parent.glob("extensions/*/delta.duckdb_extension"))
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute(f"LOAD '{extension}'")


def counts(table):
    path = str(root / table)
    dt = deltalake.DeltaTable(path)
    def query(sql):
        return pl.DataFrame(deltalake.QueryBuilder().register("t", dt).execute(sql).read_all())["n"][0]
    # Two queries: deltalake 1.6.0's engine did not finish count(*) and
    # count(distinct (...)) in one query (seen here: no answer after minutes).
    by_deltalake = (query("select count(*) as n from t"),
                    query(f"select count(*) as n from (select distinct {KEY} from t)"))
    frame = pl.read_delta(path)
    by_polars = (frame.height, frame.select(KEY.split(", ")).unique().height)
    by_duckdb = con.sql(f"select count(*), count(distinct ({KEY})) from delta_scan('{path}')").fetchone()
    got = {
        "deltalake": by_deltalake,
        "polars": by_polars,
        "duckdb": tuple(by_duckdb),
    }
    return dt.version(), got


version, scored = counts("scored")
for reader, (rows, keys) in scored.items():
    assert rows == keys == want_scored, ("scored", reader, rows, keys, want_scored)
_, anomalies = counts("anomalies")
assert len(set(anomalies.values())) == 1, ("anomalies", anomalies)
rows, keys = anomalies["polars"]
assert rows == keys, ("an anomaly event twice", anomalies)

print(f"deltalake {deltalake.__version__}, Polars {pl.__version__} and DuckDB {duckdb.__version__} "
      f"(delta extension) read {root}: {want_scored} scored rows (version {version}) as the hub "
      f"archived them, no key twice; {rows} anomaly events, the same in each")
