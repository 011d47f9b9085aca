"""``clm import``: good rows in, bad rows to the rejects file, fatal errors import nothing.

Every test runs through the real command line on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from clm import cli
from clm_core.db import tables as t
from clm_core.db.engine import make_engine

Run = Callable[..., Result]


@pytest.fixture
def run(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.chdir(tmp_path)  # where rejects files go by default
    (tmp_path / "clm.toml").write_text("[clm]\n")  # a project: commands need one

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--database", db_url, *args])
    return invoke


@pytest.fixture
def query(db_url: str):  # type: ignore[no-untyped-def]
    def read(stmt: sa.Select) -> pd.DataFrame:
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                return pd.read_sql(stmt, conn)
        finally:
            engine.dispose()
    return read


def count(query, table: sa.Table) -> int:  # type: ignore[no-untyped-def]
    return int(query(sa.select(sa.func.count().label("n")).select_from(table))["n"].iloc[0])


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


CUSTOMERS = """\
customer_id,name,email,phone,locale,signup_date
c1,Ann Lee,ann@example.com,+1 202-555-0143,en_us,2024-01-05
c2,Bob Ray,bob@,+12025550144,en,2024-01-05
c3,Cid Moe,cid@example.com,12345,en,2024-01-05
,No Id,noid@example.com,,en,2024-01-05
c4,Dee Poe,dee@example.com,,en,not-a-date
c1,Ann Again,ann2@example.com,,en,2024-01-05
c5,Eve Fox,eve@example.com,,en
c6,Fay Wu,fay@example.com,(202) 555-0188,zh-cn,2024/02/03 10:00
"""


def test_mixed_file_imports_the_good_rows_and_rejects_each_bad_one(
    run: Run, query, tmp_path: Path
) -> None:
    rejects = tmp_path / "bad.csv"
    res = run("import", "customers", str(write(tmp_path / "c.csv", CUSTOMERS)),
              "--rejects", str(rejects), "--strict")
    assert res.exit_code == 0, res.output
    assert "8 rows read, 2 imported (2 new, 0 updated, 0 unchanged), 6 rejected" in res.output
    assert f"rows with problems written to {rejects}" in res.output

    stored = query(sa.select(t.customers).order_by(t.customers.c.external_id))
    assert stored["external_id"].tolist() == ["c1", "c6"]
    c1, c6 = stored.to_dict("records")
    assert (c1["name"], c1["email"], c1["phone"], c1["locale"]) == (
        "Ann Lee", "ann@example.com", "+12025550143", "en-US")
    assert (c6["phone"], c6["locale"]) == ("+12025550188", "zh-CN")
    assert pd.Timestamp(c6["signed_up_at"]) == pd.Timestamp("2024-02-03 10:00")

    bad = pd.read_csv(rejects, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert bad.columns.tolist()[:4] == ["row", "severity", "column", "reason"]
    by_row = bad.set_index("row")
    assert by_row.index.tolist() == ["3", "4", "5", "6", "7", "8"]
    assert set(by_row["severity"]) == {"error"}
    expect = {"3": ("email", "invalid email 'bob@'"),
              "4": ("phone", "invalid phone '12345'"),
              "5": ("external_id", "required value is missing"),
              "6": ("signed_up_at", "unparseable date 'not-a-date'"),
              "7": ("external_id", "duplicate external_id (first at row 2)"),
              "8": ("", "expected 6 fields, found 5")}
    for row, (column, reason) in expect.items():
        assert by_row.loc[row, "column"] == column
        assert reason in by_row.loc[row, "reason"]
    # The original cells come along, so the file can be fixed and imported again.
    assert by_row.loc["3", "customer_id"] == "c2" and by_row.loc["3", "email"] == "bob@"
    assert by_row.loc["8"].iloc[3:].tolist() == ["c5", "Eve Fox", "eve@example.com", "", "en", ""]


def test_without_strict_bad_optional_fields_are_dropped_and_the_rows_kept(run: Run, query,
                                                                         tmp_path: Path) -> None:
    rejects = tmp_path / "bad.csv"
    res = run("import", "customers", str(write(tmp_path / "c.csv", CUSTOMERS)),
              "--rejects", str(rejects))
    assert res.exit_code == 0, res.output
    assert "8 rows read, 5 imported (5 new, 0 updated, 0 unchanged), 3 rejected, " \
           "3 kept with warnings" in res.output
    stored = query(sa.select(t.customers).order_by(t.customers.c.external_id)).set_index(
        "external_id"
    )
    assert stored.index.tolist() == ["c1", "c2", "c3", "c4", "c6"]
    assert pd.isna(stored.loc["c2", "email"]) and stored.loc["c2", "phone"] == "+12025550144"
    assert pd.isna(stored.loc["c3", "phone"]) and stored.loc["c3", "email"] == "cid@example.com"
    assert pd.isna(stored.loc["c4", "signed_up_at"])
    by_row = pd.read_csv(rejects, encoding="utf-8-sig", dtype=str).set_index("row")
    assert by_row["severity"].to_dict() == {"3": "warning", "4": "warning", "5": "error",
                                            "6": "warning", "7": "error", "8": "error"}


ORDERS = """\
order_id,customer_id,order_date,total,currency,qty
o1,c1,2024-03-01 10:00,19.90,USD,1
o2,c1,2024-03-02,-5.00,USD,1
o3,c2,yesterday,10.00,USD,1
o4,,2024-03-03,10.00,USD,1
,c3,2024-03-03,10.00,USD,1
o5,c9,2024-03-04,"$1,204.50",USD,2
o6,c9,2024-03-05,abc,USD,1
o7,c9,2024-03-05,5,USD,1.5
"""


def test_orders_file_rejects_bad_rows_and_creates_unknown_customers(
    run: Run, query, tmp_path: Path
) -> None:
    rejects = tmp_path / "rej.csv"
    res = run("import", "orders", str(write(tmp_path / "o.csv", ORDERS)), "--rejects", str(rejects))
    assert res.exit_code == 0, res.output
    assert "8 rows read, 3 imported (3 new, 0 updated, 0 unchanged), 5 rejected, " \
           "1 kept with warnings" in res.output
    assert "2 customers created from this file's customer ids, with no contact details and " \
           "no consent (c1, c9)" in res.output
    orders = query(sa.select(t.orders.c.external_id, t.orders.c.amount, t.orders.c.quantity,
                             t.orders.c.status, t.orders.c.currency,
                             t.customers.c.external_id.label("customer"))
                   .join(t.customers).order_by(t.orders.c.external_id))
    orders["quantity"] = orders["quantity"].astype("Int64")
    assert orders.astype(object).where(orders.notna(), None).to_dict("list") == {
        "external_id": ["o1", "o5", "o7"], "amount": [19.9, 1204.5, 5.0], "quantity": [1, 2, None],
        "status": ["completed"] * 3, "currency": ["USD"] * 3, "customer": ["c1", "c9", "c9"]}
    bad = pd.read_csv(rejects, encoding="utf-8-sig", dtype=str).set_index("row")
    assert bad.loc["3", "column"] == "amount" and "must be >= 0" in bad.loc["3", "reason"]
    assert bad.loc["4", "column"] == "ordered_at"
    assert bad.loc["5", "column"] == "customer_external_id"
    assert bad.loc["6", "column"] == "external_id"
    assert "not a number: 'abc'" in bad.loc["8", "reason"]
    assert "whole number" in bad.loc["9", "reason"] and bad.loc["9", "severity"] == "warning"
    # Customers named only by rejected rows are not created.
    assert sorted(query(sa.select(t.customers.c.external_id))["external_id"]) == ["c1", "c9"]


GBK_CUSTOMERS = """\
客户编号,姓名,邮箱,手机,注册时间
cn1,王伟,wangwei@example.cn,13812345678,2024年3月5日
cn2,李娜,lina@example.cn,+86 139 1234 5678,2024-03-06 09:30
cn3,张敏,不是邮箱,13812345679,2024-03-07
"""


@pytest.mark.parametrize("encoding", ["auto", "gbk", "gb18030"])
def test_gbk_file_with_chinese_headers_and_names(
    run: Run, query, tmp_path: Path, encoding: str
) -> None:
    path = write(tmp_path / "客户.csv", GBK_CUSTOMERS, "gbk")
    rejects = tmp_path / "rej.csv"
    res = run("import", "customers", str(path), "--encoding", encoding, "--region", "CN",
              "--timezone", "Asia/Shanghai", "--rejects", str(rejects))
    assert res.exit_code == 0, res.output
    assert f"({'gbk' if encoding == 'auto' else encoding})" in res.output
    assert "3 rows read, 3 imported" in res.output and "1 kept with warnings" in res.output
    stored = query(sa.select(t.customers).order_by(t.customers.c.external_id))
    assert stored["name"].tolist() == ["王伟", "李娜", "张敏"]
    assert stored["phone"].tolist() == ["+8613812345678", "+8613912345678", "+8613812345679"]
    assert pd.isna(stored["email"].iloc[2])
    # Naive times are Shanghai time, stored as UTC.
    assert pd.to_datetime(stored["signed_up_at"]).tolist() == [
        pd.Timestamp("2024-03-04 16:00"), pd.Timestamp("2024-03-06 01:30"),
        pd.Timestamp("2024-03-06 16:00")]
    bad = pd.read_csv(rejects, encoding="utf-8-sig", dtype=str)
    assert bad["row"].tolist() == ["4"] and bad["姓名"].tolist() == ["张敏"]
    assert bad["severity"].tolist() == ["warning"]
    assert "invalid email '不是邮箱'" in bad["reason"].iloc[0]


def test_utf8_file_with_bom(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "customer_id,name,email\nb1,Zoë Brontë,zoe@example.com\n",
                 "utf-8-sig")
    res = run("import", "customers", str(path))
    assert res.exit_code == 0, res.output
    assert "(utf-8): 1 rows read, 1 imported" in res.output
    assert query(sa.select(t.customers.c.external_id, t.customers.c.name)).values.tolist() == [
        ["b1", "Zoë Brontë"]]


def test_map_reads_fields_from_named_columns(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "de.csv", "Kundennummer;E-Mail-Adresse;Newsletter;Lieblingsfarbe\n"
                 "k1;k1@example.de;ja;blau\nk2;k2@example.de;nein;grün\n")
    res = run("import", "customers", str(path), "--map", "external_id=Kundennummer",
              "--map", "email=E-Mail-Adresse", "--map", "consent_email=Newsletter")
    assert res.exit_code == 0, res.output
    assert "2 imported" in res.output and "0 rejected" in res.output
    stored = query(sa.select(t.customers).order_by(t.customers.c.external_id))
    assert stored["email"].tolist() == ["k1@example.de", "k2@example.de"]
    assert stored["consent_email"].astype(bool).tolist() == [True, False]
    assert stored["consent_email_at"].notna().tolist() == [True, False]
    # Unmapped columns are kept as custom attributes.
    attrs = [
        a if isinstance(a, dict) else __import__("json").loads(a) for a in stored["attributes"]
    ]
    assert attrs == [{"lieblingsfarbe": "blau"}, {"lieblingsfarbe": "grün"}]

    res = run("import", "customers", str(path), "--map", "emial=E-Mail-Adresse")
    assert res.exit_code == 1
    assert (
        "--map names unknown field 'emial'" in res.output and "did you mean 'email'" in res.output
    )


def test_reimporting_the_same_files_changes_nothing(run: Run, query, tmp_path: Path) -> None:
    customers = write(tmp_path / "c.csv", "customer_id,name,email,accepts_email,accepts_sms\n"
                      "r1,Ann,ann@example.com,yes,no\nr2,Bob,bob@example.com,no,yes\n")
    orders = write(tmp_path / "o.csv", "order_id,customer_id,order_date,total\n"
                   "x1,r1,2024-01-01,10\nx2,r2,2024-01-02T08:00:00+08:00,20.5\nx3,r3,2024-01-03,0\n")
    first = [run("import", kind, str(path)) for kind, path in
             (("customers", customers), ("orders", orders))]
    assert all(r.exit_code == 0 for r in first), [r.output for r in first]
    before = {tb.name: query(sa.select(tb).order_by(tb.c.id)) for tb in (t.customers, t.orders)}
    again = [run("import", kind, str(path)) for kind, path in
             (("customers", customers), ("orders", orders))]
    assert "2 imported (0 new, 0 updated, 2 unchanged)" in again[0].output
    assert "3 imported (0 new, 0 updated, 3 unchanged)" in again[1].output
    assert "customers created" not in again[1].output
    for tb in (t.customers, t.orders):
        pd.testing.assert_frame_equal(query(sa.select(tb).order_by(tb.c.id)), before[tb.name])

    # A changed value is an update, and only of that row.
    write(orders, orders.read_text().replace("x1,r1,2024-01-01,10", "x1,r1,2024-01-01,12"))
    res = run("import", "orders", str(orders))
    assert "3 imported (0 new, 1 updated, 2 unchanged)" in res.output


def test_fatal_errors_exit_1_with_a_clear_message_and_import_nothing(
    run: Run, query, tmp_path: Path
) -> None:
    res = run("import", "customers", str(tmp_path / "missing.csv"))
    assert res.exit_code == 1 and "cannot read" in res.output and "missing.csv" in res.output

    typo = write(
        tmp_path / "typo.csv", "order_id,customer_id,order_date,amout\no1,c1,2024-01-01,5\n"
    )
    res = run("import", "orders", str(typo))
    assert res.exit_code == 1
    assert "missing required column 'amount'" in res.output
    assert "did you mean 'amout'" in res.output and "--map amount=COLUMN" in res.output

    gbk = write(tmp_path / "gbk.csv", GBK_CUSTOMERS, "gbk")
    res = run("import", "customers", str(gbk), "--encoding", "utf-8")
    assert res.exit_code == 1
    assert "cannot decode as utf-8" in res.output and "line 1" in res.output

    empty = write(tmp_path / "empty.csv", "")
    res = run("import", "customers", str(empty))
    assert res.exit_code == 1 and "the file is empty" in res.output

    assert "Traceback" not in res.output
    assert count(query, t.customers) == 0 and count(query, t.orders) == 0
    assert not list(Path.cwd().glob("*rejects*.csv"))


def test_naive_times_are_read_in_the_given_time_zone(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "o.csv", "order_id,customer_id,order_date,total\n"
                 "t1,c1,2024-07-01 12:00,1\n"            # EDT, UTC-4
                 "t2,c1,2024-01-15 12:00,1\n"            # EST, UTC-5
                 "t3,c1,2024-07-01T12:00:00Z,1\n"        # explicit UTC: unchanged
                 "t4,c1,2024-07-01T12:00:00+08:00,1\n"   # explicit offset
                 "t5,c1,2024-11-03 01:30,1\n"            # happens twice in New York
                 "t6,c1,2024-03-10 02:30,1\n")           # never happens: moves forward
    rejects = tmp_path / "rej.csv"
    res = run(
        "import", "orders", str(path), "--timezone", "America/New_York", "--rejects", str(rejects)
    )
    assert res.exit_code == 0, res.output
    stored = query(
        sa.select(t.orders.c.external_id, t.orders.c.ordered_at).order_by(t.orders.c.external_id)
    )
    assert dict(zip(stored["external_id"], pd.to_datetime(stored["ordered_at"]))) == {
        "t1": pd.Timestamp("2024-07-01 16:00"), "t2": pd.Timestamp("2024-01-15 17:00"),
        "t3": pd.Timestamp("2024-07-01 12:00"), "t4": pd.Timestamp("2024-07-01 04:00"),
        "t6": pd.Timestamp("2024-03-10 07:00")}
    bad = pd.read_csv(rejects, encoding="utf-8-sig", dtype=str)
    assert bad["row"].tolist() == ["6"] and "ambiguous local time" in bad["reason"].iloc[0]


def test_rejects_go_next_to_the_input_by_default(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "shop.csv", "customer_id,email\nz1,nope\n")
    res = run("import", "customers", "shop.csv")
    assert res.exit_code == 0
    assert (tmp_path / "shop-rejects.csv").is_file()


def test_order_items_and_events(run: Run, query, tmp_path: Path) -> None:
    write(tmp_path / "o.csv", "order_id,customer_id,order_date,total\no1,c1,2024-01-01,30\n")
    items = write(tmp_path / "i.csv", "order_id,sku,product_name,qty,price\n"
                  "o1,SKU-1,Tea,2,10\no1,SKU-2,Cup,1,10\no9,SKU-3,Pot,1,5\n")
    events = write(tmp_path / "e.csv", "customer_id,type,timestamp,page\n"
                   "c1,page_view,2024-01-01 10:00,/tea\nc2,page_view,2024-01-01 11:00,/cups\n")
    assert run("import", "orders", str(tmp_path / "o.csv")).exit_code == 0
    res = run("import", "order-items", str(items), "--rejects", str(tmp_path / "r.csv"))
    assert "3 rows read, 2 imported" in res.output and "1 rejected" in res.output
    assert "unknown order 'o9'" in (tmp_path / "r.csv").read_text(encoding="utf-8-sig")
    for _ in range(2):  # events without ids: the second import adds nothing
        res = run("import", "events", str(events))
        assert res.exit_code == 0, res.output
    assert count(query, t.events) == 2 and count(query, t.order_items) == 2
    assert "0 new" in res.output


def test_cdnow_import_is_complete_and_idempotent(run: Run, query) -> None:
    first = run("import", "cdnow")
    assert first.exit_code == 0, first.output
    assert "23,570 customers, 69,659 orders" in first.output
    counts = (count(query, t.customers), count(query, t.orders), count(query, t.order_items))
    assert counts[:2] == (23_570, 69_659)
    second = run("import", "cdnow")
    assert "new or changed rows: customers 0, orders 0, order_items 0" in second.output
    assert (
        count(query, t.customers),
        count(query, t.orders),
        count(query, t.order_items),
    ) == counts
