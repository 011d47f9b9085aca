"""What each importable entity's columns are, and which names they go by in exports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str  # column in the target frame
    kind: str  # id, text, email, phone, datetime, money, int, bool, locale, timezone, country
    required: bool = False
    aliases: tuple[str, ...] = ()
    max_length: int | None = None


@dataclass(frozen=True)
class Entity:
    name: str
    fields: tuple[Field, ...]
    key: str  # natural key column
    extra_column: str | None = None  # JSON column that keeps unmapped columns

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


CUSTOMERS = Entity("customers", (
    Field("external_id", "id", True, ("customer_id", "id", "customer", "customer_no", "客户id", "客户编号")),
    Field("name", "text", aliases=("full_name", "customer_name", "姓名", "客户名称"), max_length=200),
    Field("email", "email", aliases=("email_address", "e_mail", "邮箱")),
    Field("phone", "phone", aliases=("mobile", "phone_number", "telephone", "手机", "手机号", "电话")),
    Field("locale", "locale", aliases=("language", "lang")),
    Field("timezone", "timezone", aliases=("time_zone", "tz")),
    Field("country", "country", aliases=("country_code",)),
    Field("consent_email", "bool", aliases=("email_consent", "email_opt_in", "accepts_email")),
    Field("consent_email_at", "datetime", aliases=("email_consent_at",)),
    Field("consent_sms", "bool", aliases=("sms_consent", "sms_opt_in", "accepts_sms")),
    Field("consent_sms_at", "datetime", aliases=("sms_consent_at",)),
    Field("signed_up_at", "datetime", aliases=("signup_date", "created_at", "registered_at", "注册时间")),
), key="external_id", extra_column="attributes")

ORDERS = Entity("orders", (
    Field("external_id", "id", True, ("order_id", "id", "order", "order_no", "订单号", "订单编号")),
    Field("customer_external_id", "id", True, ("customer_id", "customer", "客户id", "客户编号")),
    Field("ordered_at", "datetime", True, ("order_date", "date", "created_at", "ordered", "下单时间")),
    Field("amount", "money", True, ("total", "order_total", "value", "dollar_value", "金额", "订单金额")),
    Field("currency", "text", aliases=("currency_code",), max_length=3),
    Field("quantity", "int", aliases=("qty", "items", "number_of_items", "数量")),
    Field("status", "text", aliases=("order_status",), max_length=16),
), key="external_id")

ORDER_ITEMS = Entity("order_items", (
    Field("order_external_id", "id", True, ("order_id", "order", "订单号")),
    Field("line_no", "int", aliases=("line", "line_number")),
    Field("sku", "id", True, ("product_id", "product_sku", "商品编号")),
    Field("product_name", "text", aliases=("product", "title", "name", "商品名称"), max_length=200),
    Field("quantity", "int", aliases=("qty", "数量")),
    Field("unit_price", "money", aliases=("price", "单价")),
), key="order_external_id")

EVENTS = Entity("events", (
    Field("external_id", "id", aliases=("event_id", "id")),
    Field("customer_external_id", "id", True, ("customer_id", "customer")),
    Field("event_type", "id", True, ("type", "event", "name")),
    Field("occurred_at", "datetime", True, ("timestamp", "time", "date", "created_at")),
), key="external_id", extra_column="properties")

ENTITIES = {e.name: e for e in (CUSTOMERS, ORDERS, ORDER_ITEMS, EVENTS)}
