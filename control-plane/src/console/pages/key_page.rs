//! A key's page: metadata, permissions, generations, usage charts by outcome, top operations, audit entries.

use super::*;

struct GenerationView {
    generation: i64,
    status: &'static str,
    created: String,
    not_after: String,
}

struct BucketRow {
    label: String,
    counts: [i64; 4],
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    nav: Nav,
    can_reveal: bool,
    id: String,
    name: String,
    owner: String,
    tier: String,
    status: &'static str,
    enabled: bool,
    permissions: Vec<String>,
    metadata: String,
    prefix: String,
    region: String,
    created: String,
    expires: String,
    expires_input: String,
    rotated: String,
    revoked: String,
    revoked_reason: String,
    last_used: String,
    should_rotate: bool,
    generations: Vec<GenerationView>,
    day_chart: String,
    day_rows: Vec<BucketRow>,
    week_chart: String,
    week_rows: Vec<BucketRow>,
    outcomes: [(&'static str, &'static str); 4],
    operations: Vec<(String, i64)>,
    entries: Vec<AuditRow>,
    done: Option<String>,
}

fn hour_label(start: i64) -> String {
    chrono::DateTime::from_timestamp(start, 0).map(|t| t.format("%H:00").to_string()).unwrap_or_default()
}

fn day_label(start: i64) -> String {
    chrono::DateTime::from_timestamp(start, 0).map(|t| t.format("%m-%d").to_string()).unwrap_or_default()
}

fn bucket_rows(series: &[UsageBucket], label: fn(i64) -> String) -> Vec<BucketRow> {
    series
        .iter()
        .map(|b| BucketRow {
            label: label(b.start),
            counts: [b.counts.admitted, b.counts.forbidden, b.counts.rate_limited, b.counts.refused],
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct DoneQuery {
    done: Option<String>,
}

pub(crate) async fn key_page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<DoneQuery>, QueryRejection>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<KeyId>() else {
        return service_error(ServiceError::NotFound);
    };
    let (view, secrets) = match state.service.show(id).await {
        Ok(found) => found,
        Err(error) => return service_error(error),
    };
    let now = state.service.clock().now();
    let (day, week) =
        match (state.service.key_usage(id, last_day(now)).await, state.service.key_usage(id, last_week(now)).await) {
            (Ok(day), Ok(week)) => (day, week),
            (Err(error), _) | (_, Err(error)) => return service_error(error),
        };
    let entries = if op.can(AdminScope::AuditRead) {
        match state.service.audit_log(Some(id), 20).await {
            Ok(entries) => entries.into_iter().map(AuditRow::from).collect(),
            Err(error) => return service_error(error),
        }
    } else {
        Vec::new()
    };
    let current = view.row.generation;
    let generations = secrets
        .iter()
        .map(|s| GenerationView {
            generation: s.generation,
            status: if s.generation == current {
                "current"
            } else if s.not_after.is_some_and(|end| now < end) {
                "grace"
            } else {
                "retired"
            },
            created: rfc3339(s.created_at),
            not_after: time(s.not_after),
        })
        .collect();
    let row = view.row;
    let name = row.name.clone();
    page(
        StatusCode::OK,
        &KeyPage {
            can_reveal: op.can(AdminScope::Reveal),
            nav: Nav::of(&op),
            id: row.id.to_string(),
            owner: row.owner.unwrap_or_default(),
            tier: row.tier,
            status: view.status,
            enabled: row.disabled_at.is_none(),
            permissions: row.permissions,
            metadata: row.metadata.to_string(),
            prefix: row.prefix,
            region: row.region,
            created: rfc3339(row.created_at),
            expires: time(row.expires_at),
            expires_input: row.expires_at.map(rfc3339).unwrap_or_default(),
            rotated: time(row.rotated_at),
            revoked: time(row.revoked_at),
            revoked_reason: row.revoked_reason.unwrap_or_default(),
            last_used: time(row.last_used_at),
            should_rotate: view.should_rotate,
            generations,
            day_chart: charts::stacked_bars(
                &day.series,
                &format!("{name}: requests by outcome, last 24 hours"),
                hour_label,
            ),
            day_rows: bucket_rows(&day.series, hour_label),
            week_chart: charts::stacked_bars(
                &week.series,
                &format!("{name}: requests by outcome, last 7 days"),
                day_label,
            ),
            week_rows: bucket_rows(&week.series, day_label),
            outcomes: OUTCOMES,
            operations: week.operations,
            entries,
            name,
            done: notice(query.ok().and_then(|Query(q)| q.done)),
        },
    )
}
