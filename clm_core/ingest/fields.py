"""What each importable entity's columns are, and which names they go by in exports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str  # column in the target frame
    # id, text, email, phone, datetime, money, int, bool, locale, timezone, country, currency,
    # order_status
    kind: str
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


# Aliases are compared after ``normalize_header`` (lower case, spaces and punctuation as ``_``),
# so ``E-mail Address`` matches ``e_mail_address``. Chinese aliases are what Chinese store
# back-ends (Youzan, Weidian, Taobao/Tmall exports) and hand-made spreadsheets call the columns.
CUSTOMERS = Entity("customers", (
    Field("external_id", "id", True, (
        "customer_id", "id", "customer", "customer_no", "customer_number", "member_id",
        "user_id", "客户id", "客户编号", "客户号", "会员id", "会员编号", "会员号", "用户id",
        "顾客编号")),
    Field("name", "text", aliases=(
        "full_name", "customer_name", "姓名", "名字", "客户名称", "客户姓名",
        "会员姓名", "用户名", "称呼", "收货人"), max_length=200),
    Field("email", "email", aliases=(
        "email_address", "e_mail", "e_mail_address", "mail", "邮箱", "电子邮箱", "邮箱地址",
        "电子邮件", "邮件地址", "邮件")),
    Field("phone", "phone", aliases=(
        "mobile", "mobile_phone", "mobile_number", "cell", "cellphone", "phone_number",
        "telephone", "tel", "手机", "手机号", "手机号码", "电话", "电话号码", "联系电话",
        "联系方式", "移动电话")),
    Field("locale", "locale", aliases=("language", "lang", "preferred_language", "语言",
                                       "语种", "首选语言")),
    Field("timezone", "timezone", aliases=("time_zone", "tz", "时区")),
    Field("city", "text", aliases=("town", "城市", "所在城市", "市"), max_length=100),
    Field("country", "country", aliases=("country_code", "国家", "国家代码", "国家_地区",
                                         "国家地区")),
    Field("consent_email", "bool", aliases=(
        "email_consent", "email_opt_in", "accepts_email", "accepts_marketing",
        "email_subscribed", "newsletter", "同意邮件", "邮件同意", "接受邮件", "邮件订阅",
        "订阅邮件")),
    Field("consent_email_at", "datetime", aliases=("email_consent_at", "email_opt_in_at",
                                                   "同意邮件时间", "邮件同意时间")),
    Field("consent_sms", "bool", aliases=(
        "sms_consent", "sms_opt_in", "accepts_sms", "accepts_sms_marketing", "sms_subscribed",
        "同意短信", "短信同意", "接受短信", "短信订阅", "订阅短信")),
    Field("consent_sms_at", "datetime", aliases=("sms_consent_at", "sms_opt_in_at",
                                                 "同意短信时间", "短信同意时间")),
    Field("signed_up_at", "datetime", aliases=(
        "signup_date", "signed_up", "created_at", "registered_at", "registration_date",
        "注册时间", "注册日期", "创建时间", "入会时间")),
), key="external_id", extra_column="attributes")

ORDERS = Entity("orders", (
    Field("external_id", "id", True, (
        "order_id", "id", "order", "order_no", "order_number", "order_name", "订单号",
        "订单编号", "订单id", "单号")),
    Field("customer_external_id", "id", True, (
        "customer_id", "customer", "customer_no", "customer_number", "member_id", "user_id",
        "客户id", "客户编号", "客户号", "会员id", "会员编号", "会员号", "用户id", "顾客编号")),
    Field("ordered_at", "datetime", True, (
        "order_date", "date", "created_at", "ordered", "order_time", "purchase_date",
        "下单时间", "下单日期", "订单时间", "创建时间", "付款时间", "购买时间", "日期")),
    Field("amount", "money", True, (
        "total", "order_total", "total_price", "value", "dollar_value", "amount_paid",
        "金额", "订单金额", "实付金额", "实付款", "支付金额", "付款金额", "总金额", "总价")),
    Field("currency", "currency", aliases=("currency_code", "币种", "货币", "币别")),
    Field("quantity", "int", aliases=("qty", "items", "number_of_items", "数量", "件数",
                                      "商品数量")),
    Field("status", "order_status", aliases=(
        "order_status", "financial_status", "状态", "订单状态", "交易状态")),
    Field("coupon_code", "text", aliases=(
        "coupon", "discount_code", "promo_code", "voucher", "voucher_code", "优惠券",
        "优惠码", "优惠券码", "券码", "折扣码"), max_length=64),
), key="external_id")

ORDER_ITEMS = Entity("order_items", (
    Field("order_external_id", "id", True, ("order_id", "order", "order_no", "订单号",
                                            "订单编号")),
    Field("line_no", "int", aliases=("line", "line_number", "行号", "序号")),
    Field("sku", "id", True, ("product_id", "product_sku", "item_id", "商品编号", "商品编码",
                              "货号", "商品id")),
    Field("product_name", "text", aliases=("product", "title", "name", "item_name",
                                           "商品名称", "商品", "品名"), max_length=200),
    Field("quantity", "int", aliases=("qty", "数量", "件数")),
    Field("unit_price", "money", aliases=("price", "单价", "价格")),
), key="order_external_id")

EVENTS = Entity("events", (
    Field("external_id", "id", aliases=("event_id", "id", "事件id", "事件编号")),
    Field("customer_external_id", "id", True, ("customer_id", "customer", "客户id", "客户编号",
                                               "会员id", "用户id")),
    Field("event_type", "id", True, ("type", "event", "name", "事件", "事件类型")),
    Field("occurred_at", "datetime", True, ("timestamp", "time", "date", "created_at", "时间",
                                            "发生时间")),
), key="external_id", extra_column="properties")

ENTITIES = {e.name: e for e in (CUSTOMERS, ORDERS, ORDER_ITEMS, EVENTS)}
