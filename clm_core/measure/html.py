"""The report as one self-contained HTML file (inline CSS and SVG; no script, no external URL),
in English or Simplified Chinese. Customer-supplied text (segment names, locales, countries,
journey names) passes through Jinja2's autoescaping; charts escape their own labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from clm_core.measure import charts
from clm_core.measure.report import ReportData
from clm_core.reporting import STAGE_ORDER

LOCALES = ("en", "zh-CN")

STRINGS: dict[str, dict[str, str]] = {
    "title": {"en": "Store report", "zh-CN": "店铺报告"},
    "generated": {"en": "Scores as of", "zh-CN": "评分日期"},
    "since": {"en": "Journeys and messages since", "zh-CN": "旅程与消息起始日期"},
    "all_time": {"en": "all time", "zh-CN": "全部时间"},
    "customers": {"en": "Customers", "zh-CN": "客户"},
    "lifecycle": {"en": "Lifecycle", "zh-CN": "生命周期"},
    "stages_now": {"en": "Customers per stage now", "zh-CN": "当前各阶段客户数"},
    "stages_time": {
        "en": "Customers per stage over time (after each scoring)",
        "zh-CN": "各阶段客户数随时间变化（每次评分后）",
    },
    "transitions": {
        "en": "Flows between stages (from row to column)",
        "zh-CN": "阶段之间的流转（行 → 列）",
    },
    "first_stage": {"en": "(first)", "zh-CN": "（首次）"},
    "by_stage": {"en": "Revenue and 12-month CLV by stage", "zh-CN": "各阶段收入与 12 个月 CLV"},
    "stage": {"en": "Stage", "zh-CN": "阶段"},
    "revenue": {"en": "Revenue to date", "zh-CN": "累计收入"},
    "clv_sum": {"en": "CLV 12m, total", "zh-CN": "12 个月 CLV 合计"},
    "clv_mean": {"en": "CLV 12m, mean", "zh-CN": "12 个月 CLV 均值"},
    "value": {"en": "Value", "zh-CN": "价值"},
    "clv_dist": {
        "en": "12-month CLV distribution (customers per band; top 1% in the last band)",
        "zh-CN": "12 个月 CLV 分布（各区间客户数；最高 1% 计入最后一档）",
    },
    "concentration": {
        "en": "Share of predicted value held by the top 10% / 20% of customers",
        "zh-CN": "前 10% / 20% 客户占预测价值的比例",
    },
    "rfm_grid": {
        "en": "RFM grid: customers by recency score (rows) and frequency score (columns)",
        "zh-CN": "RFM 网格：按最近购买得分（行）和购买频率得分（列）的客户数",
    },
    "churn": {"en": "Churn", "zh-CN": "流失"},
    "retention": {
        "en": "Retention by acquisition cohort: share buying in month k after the first order",
        "zh-CN": "按获客月份的留存：首单后第 k 个月仍购买的比例",
    },
    "month_k": {"en": "month", "zh-CN": "月"},
    "churn_by": {
        "en": "Churned and at-risk share of buyers by",
        "zh-CN": "已流失与有流失风险客户占比，按",
    },
    "first_order_value": {"en": "first-order value", "zh-CN": "首单金额"},
    "rfm_segment": {"en": "RFM segment", "zh-CN": "RFM 分群"},
    "locale": {"en": "locale", "zh-CN": "语言"},
    "country": {"en": "country", "zh-CN": "国家/地区"},
    "churned": {"en": "churned", "zh-CN": "已流失"},
    "at_risk": {"en": "at risk", "zh-CN": "有流失风险"},
    "revenue_at_risk": {
        "en": "Revenue at risk (12-month CLV of at-risk customers)",
        "zh-CN": "风险收入（有流失风险客户的 12 个月 CLV）",
    },
    "journeys_reached": {
        "en": "Journeys that reached customers now at risk or churned",
        "zh-CN": "触达当前有风险或已流失客户的旅程",
    },
    "journeys": {"en": "Journeys", "zh-CN": "旅程"},
    "lift_table": {
        "en": "Lift: treated vs control (complete conversion windows; 95% intervals)",
        "zh-CN": "提升：实验组对照组对比（完整转化窗口；95% 置信区间）",
    },
    "comparison": {"en": "Comparison", "zh-CN": "对比"},
    "treated": {"en": "Treated", "zh-CN": "实验组"},
    "control": {"en": "Control", "zh-CN": "对照组"},
    "conv": {"en": "Conversion", "zh-CN": "转化率"},
    "lift_pts": {"en": "Lift (points)", "zh-CN": "提升（百分点）"},
    "rev_cust": {"en": "Revenue per customer", "zh-CN": "人均收入"},
    "rev_diff": {"en": "Difference", "zh-CN": "差值"},
    "variance": {"en": "variance", "zh-CN": "方差"},
    "list_sep": {"en": ",", "zh-CN": "，"},
    "coupon_cost": {"en": "Coupon cost", "zh-CN": "优惠券成本"},
    "net_incr": {"en": "Net incremental revenue", "zh-CN": "净增量收入"},
    "verdict": {"en": "Verdict", "zh-CN": "结论"},
    "verdicts": {"en": "Verdicts", "zh-CN": "结论说明"},
    "call_better": {"en": "treated better", "zh-CN": "实验组更好"},
    "call_worse": {"en": "treated worse", "zh-CN": "实验组更差"},
    "call_inconclusive": {"en": "no winner", "zh-CN": "无胜出"},
    "call_too_small": {"en": "too few", "zh-CN": "样本不足"},
    "call_no_control": {"en": "no control", "zh-CN": "无对照组"},
    "step": {"en": "Step", "zh-CN": "步骤"},
    "window_revenue": {"en": "Revenue in window", "zh-CN": "窗口内收入"},
    "methods": {"en": "Methods", "zh-CN": "方法"},
    "pending": {
        "en": "enrollments with open conversion windows are left out",
        "zh-CN": "个转化窗口尚未结束的报名未计入",
    },
    "no_lift": {
        "en": "No enrollment has a complete conversion window yet.",
        "zh-CN": "尚无转化窗口已结束的报名。",
    },
    "variants": {"en": "Split variants (treated only)", "zh-CN": "分流变体（仅实验组）"},
    "funnel": {"en": "Funnel per journey (treated enrollments)", "zh-CN": "各旅程漏斗（实验组）"},
    "entered": {"en": "entered", "zh-CN": "进入"},
    "sent": {"en": "sent", "zh-CN": "已发送"},
    "delivered": {"en": "delivered", "zh-CN": "已送达"},
    "opened": {"en": "opened", "zh-CN": "已打开"},
    "clicked": {"en": "clicked", "zh-CN": "已点击"},
    "converted": {"en": "converted", "zh-CN": "已转化"},
    "diagram": {"en": "Journey diagrams", "zh-CN": "旅程图"},
    "diagram_note": {
        "en": "Entered: enrollments (treated and control); reached: enrollments with a message row for the step; converted: enrollments that reached a goal in their window.",  # noqa: E501  (prose or a URL: clearer whole)
        "zh-CN": "进入：报名数（含实验组与对照组）；到达：该步骤有消息记录的报名数；转化：在转化窗口内达成目标的报名数。",  # noqa: E501  (prose or a URL: clearer whole)
    },
    "mermaid": {
        "en": "Mermaid text (for editors and GitHub)",
        "zh-CN": "Mermaid 文本（用于编辑器与 GitHub）",
    },
    "model_check": {"en": "Model check", "zh-CN": "模型校验"},
    "calibration": {
        "en": "Repeat purchases in the holdout period, mean per customer, by calibration frequency",
        "zh-CN": "验证期内人均复购次数，按校准期购买频次",
    },
    "actual": {"en": "actual", "zh-CN": "实际"},
    "predicted": {"en": "predicted", "zh-CN": "预测"},
    "no_model_check": {
        "en": "No fit with a holdout period is stored: run clm fit --calibration-end D --holdout-end D2 to add one.",  # noqa: E501  (prose or a URL: clearer whole)
        "zh-CN": "没有带验证期的模型拟合记录：运行 clm fit --calibration-end D --holdout-end D2 添加。",  # noqa: E501  (prose or a URL: clearer whole)
    },
    "deliverability": {"en": "Deliverability", "zh-CN": "送达情况"},
    "channel": {"en": "Channel", "zh-CN": "渠道"},
    "failed": {"en": "failed", "zh-CN": "失败"},
    "bounce_rate": {"en": "bounce rate", "zh-CN": "退信率"},
    "complaint_rate": {"en": "complaint rate", "zh-CN": "投诉率"},
    "unsub_rate": {"en": "unsubscribe rate", "zh-CN": "退订率"},
    "no_messages": {"en": "No message has been sent yet.", "zh-CN": "尚未发送任何消息。"},
    "none": {"en": "No data yet.", "zh-CN": "暂无数据。"},
    "last_touch": {
        "en": "Last-touch view (secondary, not causal): conversions by the last message sent before the first order",  # noqa: E501  (prose or a URL: clearer whole)
        "zh-CN": "末次触点视图（辅助参考，非因果）：按首单前最后一条消息统计的转化",
    },
}


def t(key: str, locale: str) -> str:
    return STRINGS[key].get(locale, STRINGS[key]["en"])


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:.{digits}f}%"


def money(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:,.2f}"


def ci(lo: float, hi: float, scale: float = 1.0, fmt: str = "{:+,.1f}") -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{fmt.format(lo * scale)}, {fmt.format(hi * scale)}]"


def _charts(d: ReportData, locale: str) -> dict[str, Markup]:
    out: dict[str, str] = {}
    order = [s for s in STAGE_ORDER if s in d.stages] + [
        s for s in d.stages if s not in STAGE_ORDER
    ]
    out["stages_now"] = charts.bars(
        [(s, float(d.stages[s])) for s in order], t("stages_now", locale)
    )
    if d.stages_over_time:
        names = sorted({s for _, c in d.stages_over_time for s in c},
                       key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else 99, s))
        out["stages_time"] = charts.lines(
            [(s, [float(c.get(s, 0)) for _, c in d.stages_over_time]) for s in names],
            [f"{day:%Y-%m-%d}" for day, _ in d.stages_over_time], t("stages_time", locale))
    froms = sorted({a or "" for a, _ in d.transitions}, key=lambda s: (s != "", _stage_key(s)))
    tos = sorted({b for _, b in d.transitions}, key=_stage_key)
    if froms and tos:
        out["transitions"] = charts.heatmap(
            [f or t("first_stage", locale) for f in froms],
            tos,
            lambda i, j: float(d.transitions.get((froms[i] or None, tos[j]), 0)),
            t("transitions", locale),
        )
    out["clv_hist"] = charts.histogram(d.clv_hist, t("clv_dist", locale))
    if d.rfm_grid:
        out["rfm_grid"] = charts.heatmap(
            [f"R{r}" for r in range(5, 0, -1)], [f"F{f}" for f in range(1, 6)],
            lambda i, j: float(d.rfm_grid.get((5 - i, j + 1), 0)), t("rfm_grid", locale))
    if d.retention:
        out["retention"] = charts.lines(
            [(r["cohort"], r["curve"]) for r in d.retention],
            [f"{t('month_k', locale)} {k}" for k in range(1, len(d.retention[0]["curve"]) + 1)],
            t("retention", locale), yfmt=lambda v: f"{v * 100:.0f}%")
    for key, rows in d.churn_by.items():
        if rows:
            out[f"churn_{key}"] = charts.bars([(r["key"], r["churned"]) for r in rows[:12]],
                                              f"{t('churn_by', locale)} {t(key, locale)}", pct)
    if d.model_check:
        rows = d.model_check["rows"]
        body = [r for r in rows if str(r.get("calibration_frequency")) not in ("total", "all")]
        out["calibration"] = charts.lines(
            [(t("actual", locale), [r["actual"] for r in body]),
             (t("predicted", locale), [r["predicted"] for r in body])],
            [str(r["calibration_frequency"]) for r in body], t("calibration", locale),
            yfmt="{:.2f}".format, dashed=[t("predicted", locale)])
    if d.funnels:
        stepsf = ("entered", "sent", "delivered", "opened", "clicked", "converted")
        out["funnel"] = charts.heatmap(
            [f["journey"] for f in d.funnels], [t(s, locale) for s in stepsf],
            lambda i, j: float(d.funnels[i][stepsf[j]]), t("funnel", locale))
    return {k: Markup(v) for k, v in out.items()}  # built with escaped labels


def verdict_text(c: Any, which: str, locale: str) -> str:
    """A comparison's verdict in the report's language (the English text is the reference)."""
    v = c.verdict if which == "conversion" else c.revenue_verdict
    if locale == "en":
        return str(v.text)
    if which == "conversion":
        what, diff, lo, hi = (
            "转化率",
            c.conversion.diff * 100,
            *(x * 100 for x in c.conversion.diff_ci),
        )
        f = "{:+.1f} 个百分点".format
    else:
        what, diff, (lo, hi) = "人均收入", c.revenue.diff, c.revenue.diff_ci
        f = "{:+,.2f}".format
    head = f"{c.label} {what}："
    more = (
        f"按当前分组比例，约需再增加 {v.more_customers:,} 名客户才能检测到这一大小的差异（{f(diff)}）"  # noqa: E501  (prose or a URL: clearer whole)
        if v.more_customers
        else "未观察到差异"
    )
    return head + {
        "no_control": "没有对照组，无法衡量提升。",
        "too_small": f"样本太少，无法判断（实验组 {c.treated:,}，对照组 {c.control:,}，每组至少 30）；{more}。",  # noqa: E501  (prose or a URL: clearer whole)
        "better": f"实验组优于对照组 {f(diff)}（95% 区间 {f(lo)} 至 {f(hi)}）。",
        "worse": f"实验组差于对照组 {f(diff)}（95% 区间 {f(lo)} 至 {f(hi)}）。",
        "inconclusive": f"无胜出：95% 区间 {f(lo)} 至 {f(hi)} 包含零；{more}。",
    }.get(v.call, str(v.text))


def _stage_key(s: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s)


def render(d: ReportData, locale: str = "en") -> str:
    """The report's HTML text."""
    if locale not in LOCALES:
        raise ValueError(f"locale {locale!r}: use one of {', '.join(LOCALES)}")
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        t=lambda key: t(key, locale),
        pct=pct,
        money=money,
        ci=ci,
        isfinite=math.isfinite,
        verdict=lambda c, which: verdict_text(c, which, locale),
        jnum=lambda x: json.dumps(x if math.isfinite(x) else None),
    )
    comparisons = d.lift.comparisons
    return env.get_template("report.html.j2").render(
        d=d, locale=locale, charts=_charts(d, locale), comparisons=comparisons,
        diagrams={k: Markup(v) for k, v in d.diagrams.items()},  # escaped by measure.diagram
        lift_methods=d.lift.as_dict()["methods"])


def write_report(engine: Any, out: str | Path, since: Any = None, locale: str = "en",
                 journeys: Any = ()) -> tuple[Path, dict[str, Any]]:
    """Collect, render and write the report; returns the path and the key figures."""
    from clm_core.measure.report import collect

    data = collect(engine, since, journeys)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data, locale), encoding="utf-8")
    return path, data.summary()
