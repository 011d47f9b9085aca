"""``clm import`` on files as real stores export them: Chinese headers in GBK, bad optional
fields, phones without a country code, order states and currencies, spreadsheet-safe rejects.

Every test runs through the real command line on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.lifecycle.features import customer_features
from tests.test_import import Run, count, query, run, write  # noqa: F401  (fixtures)

# A store's member export: GBK, Chinese headers, yes/no in Chinese, columns CLM has no field
# for. 孙静's phone has a digit too few.
GBK_MEMBERS = """\
会员编号,姓名,手机号,邮箱,语言,时区,城市,国家,同意邮件,同意短信,会员等级,备注
m1,王伟,13812345678,wangwei@example.cn,zh-CN,Asia/Shanghai,上海,CN,是,否,金卡,老客户
m2,李娜,+86 139 1234 5678,lina@example.cn,zh_cn,Asia/Shanghai,北京,cn,否,是,银卡,
m3,孙静,1381234567,sunjing@example.cn,zh-CN,Asia/Shanghai,杭州,CN,Y,N,普通,电话有误
m4,Tom Li,13612345678,tom@example.com,en,Europe/London,London,GB,1,0,普通,
"""


def read_rejects(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False).set_index(
        "row"
    )


def test_gbk_member_export_with_chinese_headers(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "会员.csv", GBK_MEMBERS, "gbk")
    res = run("import", "customers", str(path), "--region", "CN")
    assert res.exit_code == 0, res.output
    assert "(gbk): 4 rows read, 4 imported (4 new, 0 updated, 0 unchanged), 0 rejected, " \
           "1 kept with warnings" in res.output
    assert "2 columns not recognised, kept in attributes: 会员等级, 备注" in res.output
    assert "kept, field dropped 1: phone: invalid phone" in res.output
    rejects = tmp_path / "会员-rejects.csv"
    assert f"rows with problems written to {rejects}" in res.output

    stored = query(sa.select(t.customers).order_by(t.customers.c.external_id)).set_index(
        "external_id"
    )
    assert stored["name"].tolist() == ["王伟", "李娜", "孙静", "Tom Li"]
    assert stored["locale"].tolist() == ["zh-CN", "zh-CN", "zh-CN", "en"]
    assert stored["timezone"].tolist() == ["Asia/Shanghai"] * 3 + ["Europe/London"]
    assert stored["city"].tolist() == ["上海", "北京", "杭州", "London"]
    assert stored["country"].tolist() == ["CN", "CN", "CN", "GB"]
    assert stored["consent_email"].astype(bool).tolist() == [True, False, True, True]
    assert stored["consent_sms"].astype(bool).tolist() == [False, True, False, False]
    assert stored["consent_email_at"].notna().tolist() == [True, False, True, True]
    # The customer with the bad phone is kept, email and consent included, phone empty.
    assert pd.isna(stored.loc["m3", "phone"]) and stored.loc["m3", "email"] == "sunjing@example.cn"
    assert stored.loc["m1", "phone"] == "+8613812345678"
    attrs = [a if isinstance(a, dict) else json.loads(a) for a in stored["attributes"]]
    assert attrs[0] == {"会员等级": "金卡", "备注": "老客户"} and attrs[1] == {"会员等级": "银卡"}

    bad = read_rejects(rejects)
    assert bad.index.tolist() == ["4"]
    assert (bad.loc["4", "severity"], bad.loc["4", "column"]) == ("warning", "phone")
    assert "invalid phone '1381234567'" in bad.loc["4", "reason"]
    assert bad.loc["4", "姓名"] == "孙静"


def test_strict_rejects_a_row_for_a_bad_optional_field(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "members.csv", GBK_MEMBERS, "gbk")
    res = run("import", "customers", str(path), "--region", "CN", "--strict")
    assert res.exit_code == 0, res.output
    assert "4 rows read, 3 imported" in res.output and "1 rejected" in res.output
    assert "rejected 1: phone: invalid phone" in res.output
    assert sorted(query(sa.select(t.customers.c.external_id))["external_id"]) == ["m1", "m2", "m4"]
    assert read_rejects(tmp_path / "members-rejects.csv").loc["4", "severity"] == "error"


def test_strict_columns_refuses_unknown_columns_and_imports_nothing(run: Run, query,
                                                                    tmp_path: Path) -> None:
    path = write(tmp_path / "members.csv", GBK_MEMBERS, "gbk")
    res = run("import", "customers", str(path), "--region", "CN", "--strict-columns")
    assert res.exit_code == 1
    assert "2 columns match no field of customers: 会员等级, 备注" in res.output
    assert "--map FIELD=COLUMN" in res.output and "Traceback" not in res.output
    assert count(query, t.customers) == 0


def test_a_bad_value_never_erases_a_stored_one(run: Run, query, tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", "customer_id,phone,timezone,accepts_email\n"
                  "k1,+8613812345678,Asia/Shanghai,yes\n")
    assert run("import", "customers", str(first)).exit_code == 0
    again = write(tmp_path / "b.csv", "customer_id,phone,timezone,accepts_email\n"
                  "k1,138-1234,Mars/Olympus,maybe\n")
    res = run("import", "customers", str(again))
    assert res.exit_code == 0, res.output
    assert "1 kept with warnings" in res.output
    row = query(sa.select(t.customers)).iloc[0]
    assert (row["phone"], row["timezone"], bool(row["consent_email"])) == (
        "+8613812345678", "Asia/Shanghai", True)
    bad = read_rejects(tmp_path / "b-rejects.csv")
    assert bad.loc["2", "column"] == "phone; timezone; consent_email"
    assert "unknown time zone 'Mars/Olympus'" in bad.loc["2", "reason"]


def test_chinese_phones_under_region_us_get_a_hint(run: Run, query, tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "customer_id,phone\nh1,13812345678\nh2,139 1234 5678\n"
                 "h3,(202) 555-0143\nh4,13612345678\n")
    res = run("import", "customers", str(path), "--region", "US")
    assert res.exit_code == 0, res.output
    assert "4 imported" in res.output and "2 kept with warnings" in res.output
    # h4 is also a valid Texas number (+1 361 ...), so it counts once others were refused.
    assert "hint: 3 phones look Chinese (11 digits starting with 1) but were read " \
           "with default region US: import again with --region CN" in res.output
    res = run("import", "customers", str(path), "--region", "cn")
    assert "hint" not in res.output and "0 rejected" in res.output
    # (202) 555-0143 is a Guangzhou landline to a Chinese reader.
    assert sorted(query(sa.select(t.customers.c.phone))["phone"]) == [
        "+8613612345678", "+8613812345678", "+8613912345678", "+862025550143"]
    res = run("import", "customers", str(path), "--region", "XX")
    assert res.exit_code == 1 and "unknown phone region 'XX'" in res.output


GBK_ORDERS = """\
订单号,会员编号,下单时间,金额(元),币种,状态,优惠码,渠道
d1,m1,2024-03-01 10:00,￥88.00,人民币,已完成,WELCOME10,小程序
d2,m1,2024-03-05 10:00,120,CNY,已取消,,小程序
d3,m2,2024-03-06 11:00,59.9,RMB,已退款,,App
d4,m9,2024-03-07 12:00,EUR 15,,paid,SPRING,Web
d5,m2,2024-03-08 12:00,30,CNY,火星状态,,App
"""


def test_orders_with_status_currency_and_coupon(run: Run, query, engine: sa.Engine,
                                                tmp_path: Path) -> None:
    assert run("import", "customers", str(write(tmp_path / "m.csv", GBK_MEMBERS, "gbk")),
               "--region", "CN").exit_code == 0
    res = run("import", "orders", str(write(tmp_path / "订单.csv", GBK_ORDERS, "gbk")))
    assert res.exit_code == 0, res.output
    assert "5 rows read, 5 imported" in res.output and "1 kept with warnings" in res.output
    assert "1 columns not recognised, not imported: 渠道" in res.output
    assert "1 customers created from this file's customer ids, with no contact details and " \
           "no consent (m9): import the customers file to complete them" in res.output
    assert "note: 4 orders in CNY, not the store's currency USD" in res.output
    assert "note: 1 orders in EUR" in res.output
    assert "kept, field dropped 1: status: unknown order status" in res.output
    orders = query(sa.select(t.orders).order_by(t.orders.c.external_id)).set_index("external_id")
    assert orders["status"].tolist() == ["completed", "cancelled", "refunded", "completed",
                                         "completed"]
    assert orders["currency"].tolist() == ["CNY", "CNY", "CNY", "EUR", "CNY"]
    assert orders["amount"].tolist() == [88.0, 120.0, 59.9, 15.0, 30.0]
    assert orders["coupon_code"].fillna("").tolist() == ["WELCOME10", "", "", "SPRING", ""]
    # Cancelled and refunded orders are no purchases.
    with engine.connect() as conn:
        f = customer_features(conn, date(2024, 3, 31)).frame
    ids = dict(query(sa.select(t.customers.c.external_id, t.customers.c.id)).values.tolist())
    by_id = f.set_index("customer_id")
    assert by_id.loc[ids["m1"], "n_orders"] == 1 and by_id.loc[ids["m1"], "total_spend"] == 88.0
    assert by_id.loc[ids["m2"], "n_orders"] == 1 and by_id.loc[ids["m2"], "total_spend"] == 30.0


def test_rejects_are_safe_to_open_in_a_spreadsheet_and_import_again(run: Run, query,
                                                                   tmp_path: Path) -> None:
    path = write(tmp_path / "shop.csv", "customer_id,name,email\n"
                 "=HYPERLINK(\"http://evil\"),@SUM(A1),bad@\nok1,-Ann,ann@example.com\n"
                 "+x2,+Bob,not-an-email\n")
    res = run("import", "customers", str(path), "--strict")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "shop-rejects.csv").read_text(encoding="utf-8-sig")
    cells = [c for line in text.splitlines()[1:] for c in line.split(",")]
    assert not any(c.lstrip('"').startswith(("=", "+", "-", "@")) for c in cells), text
    assert "'@SUM(A1)" in text and "'+Bob" in text
    # The rejects file, fixed, imports as it was written: the apostrophes go again.
    fixed = tmp_path / "fixed.csv"
    bad = pd.read_csv(tmp_path / "shop-rejects.csv", encoding="utf-8-sig", dtype=str)
    bad["email"] = ["x1@example.com", "x2@example.com"]
    bad.drop(columns=["row", "severity", "column", "reason"]).to_csv(fixed, index=False)
    res = run("import", "customers", str(fixed))
    assert res.exit_code == 0 and "0 rejected" in res.output, res.output
    names = dict(query(sa.select(t.customers.c.external_id, t.customers.c.name)).values.tolist())
    assert names["+x2"] == "+Bob" and names['=HYPERLINK("http://evil")'] == "@SUM(A1)"
    assert names["ok1"] == "-Ann"


def test_rejects_file_goes_next_to_the_input_and_stale_ones_go(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    path = write(folder / "shop.csv", "customer_id,email\nz1,nope\n")
    res = run("import", "customers", str(path), "--strict")
    assert res.exit_code == 0
    assert (folder / "shop-rejects.csv").is_file()
    assert f"rows with problems written to {folder / 'shop-rejects.csv'}" in res.output
    write(path, "customer_id,email\nz1,z1@example.com\n")
    res = run("import", "customers", str(path))
    assert "rows with problems" not in res.output
    assert not (folder / "shop-rejects.csv").exists()


@pytest.mark.parametrize("encoding,text,expected", [
    ("cp1252", "customer_id,name\nw1,Jürgen Müller\nw2,Zoë Brontë\n", "cp1252"),
    ("utf-16", "customer_id\tname\tcity\nw1\t王伟\t上海\nw2\tZoë\tParis\n", "utf-16"),
    ("gb18030", "customer_id,name\nw1,王伟\nw2,李娜\n", "gbk"),
])
def test_encoding_detection(run: Run, query, tmp_path: Path, encoding: str, text: str,
                            expected: str) -> None:
    res = run("import", "customers", str(write(tmp_path / "e.csv", text, encoding)))
    assert res.exit_code == 0, res.output
    assert f"({expected}): 2 rows read, 2 imported" in res.output
    names = query(sa.select(t.customers.c.name).order_by(t.customers.c.external_id))["name"]
    assert names.tolist() == [line.split(text[11])[1] for line in text.splitlines()[1:]]


def test_events_with_an_empty_id_cell_import_once(run: Run, query, tmp_path: Path) -> None:
    events = write(tmp_path / "e.csv", "event_id,customer_id,type,timestamp\n"
                   ",c1,page_view,2024-01-01 10:00\ne2,c1,page_view,2024-01-01 11:00\n")
    for _ in range(2):
        res = run("import", "events", str(events))
        assert res.exit_code == 0, res.output
    assert count(query, t.events) == 2 and "2 imported (0 new" in res.output
