//! Estimate handlers: `EstimateCost` (a basket of usage, optionally against
//! an account's tokens and credit) and `ComparePlans` (a month's usage
//! against every metered plan). Both only read; the pricing is the domain's
//! (`billing_domain::estimate`).

use billing_domain::estimate::{self, UsageLine, Wallet};
use billing_domain::{Rejection, ServiceType, Usage};
use billing_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::BillingApi;
use crate::convert::{FromProto, ToProto};
use crate::request::named_account;
use crate::status::{invalid, rejected};
use crate::validate::{Number, number};

/// The most lines one request may price: a basket or a month is a handful
/// of services, and each line is priced on its own.
pub const MAX_USAGE_LINES: usize = 100;

/// The names a list of usage lines reports its fields by.
struct LineFields {
    list: &'static str,
    service_type: &'static str,
    count: &'static str,
    duration_ms: &'static str,
    quantity: &'static str,
}

const BASKET: LineFields = LineFields {
    list: "lines",
    service_type: "lines.service_type",
    count: "lines.count",
    duration_ms: "lines.duration_ms",
    quantity: "lines.quantity",
};

const MONTH: LineFields = LineFields {
    list: "monthly_usage",
    service_type: "monthly_usage.service_type",
    count: "monthly_usage.count",
    duration_ms: "monthly_usage.duration_ms",
    quantity: "monthly_usage.quantity",
};

/// A number of line `index`, by the rule of its kind; a negative one says
/// which line it is on.
fn line_number(field: &'static str, index: usize, kind: Number, value: i64) -> Result<i64, Status> {
    if value < 0 {
        return Err(invalid(
            field,
            format!("line {index}: must not be negative"),
        ));
    }
    number(field, kind, value)
}

/// The request's usage lines, each checked like a `Rate` request's usage.
fn usage_lines(fields: &LineFields, lines: &[pb::UsageLine]) -> Result<Vec<UsageLine>, Status> {
    if lines.len() > MAX_USAGE_LINES {
        return Err(invalid(
            fields.list,
            format!("at most {MAX_USAGE_LINES} lines, not {}", lines.len()),
        ));
    }
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let service = pb::ServiceType::try_from(line.service_type)
                .ok()
                .and_then(ServiceType::from_proto)
                .ok_or_else(|| {
                    invalid(
                        fields.service_type,
                        format!(
                            "line {index}: unknown or unspecified value {}",
                            line.service_type
                        ),
                    )
                })?;
            let count = line_number(fields.count, index, Number::Count, line.count)?;
            let duration = line_number(
                fields.duration_ms,
                index,
                Number::DurationMs,
                line.duration_ms,
            )?;
            let quantity = line_number(fields.quantity, index, Number::Count, line.quantity)?;
            let usage = Usage::for_service(
                service,
                duration,
                quantity,
                fields.duration_ms,
                fields.quantity,
            )
            .map_err(|e| invalid(fields.list, format!("line {index}: {e}")))?;
            Ok(UsageLine {
                service,
                count,
                usage,
            })
        })
        .collect()
}

/// An amount past `i64`: the request asks for too much, never a wrapped
/// number.
fn overflow(_: billing_domain::Overflow) -> Status {
    rejected(&Rejection::Overflow)
}

pub async fn estimate_cost(
    api: &BillingApi,
    request: Request<pb::EstimateCostRequest>,
) -> Result<Response<pb::EstimateCostResponse>, Status> {
    let r = request.get_ref();
    let lines = usage_lines(&BASKET, &r.lines)?;
    // The balance as GetBalance shows it: what time has made due (expired
    // holds, a token reset) already applied.
    let view = named_account(api, &request, "EstimateCost", &r.account_id)
        .await?
        .map(|account| account.view(api.store.now().max(account.tm_update)))
        .transpose()
        .map_err(overflow)?;
    let wallet = view.as_ref().map_or(Wallet::EMPTY, Wallet::of);
    let priced = estimate::estimate(api.store.rates(), &lines, wallet).map_err(overflow)?;
    let affordable = view
        .as_ref()
        .map(|v| estimate::can_pay(v, priced.total_credit))
        .transpose()
        .map_err(overflow)?;
    Ok(Response::new(pb::EstimateCostResponse {
        lines: priced
            .lines
            .iter()
            .map(|l| pb::LineEstimate {
                billable_units: l.billable_units,
                token_amount: l.tokens.get(),
                credit_amount: l.credit.get(),
                rate_token_per_unit: l.rate.tokens_per_unit.get(),
                rate_credit_per_unit: l.rate.credit_per_unit.get(),
            })
            .collect(),
        total_token: priced.total_tokens.get(),
        total_credit: priced.total_credit.get(),
        affordable,
        account_version: view.map(|v| v.version),
    }))
}

pub async fn compare_plans(
    api: &BillingApi,
    request: Request<pb::ComparePlansRequest>,
) -> Result<Response<pb::ComparePlansResponse>, Status> {
    let usage = usage_lines(&MONTH, &request.get_ref().monthly_usage)?;
    let comparison = estimate::compare_plans(api.store.rates(), &usage).map_err(overflow)?;
    Ok(Response::new(pb::ComparePlansResponse {
        plans: comparison
            .plans
            .iter()
            .map(|p| pb::PlanEstimate {
                plan_type: p.plan.to_proto().into(),
                monthly_tokens: p.monthly_tokens.get(),
                tokens_needed: p.tokens_needed.get(),
                overflow_credit_best: p.overflow_best.get(),
                overflow_credit_worst: p.overflow_worst.get(),
            })
            .collect(),
        cheapest_plan: comparison.cheapest.to_proto().into(),
        credit_only_amount: comparison.credit_only.get(),
    }))
}
