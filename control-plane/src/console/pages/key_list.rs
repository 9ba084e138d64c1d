//! The key list (searched, filtered by status, a page at a time, with 24 h sparklines) and creating a key.

use super::*;

/// One row of the key list.
struct KeyRowView {
    id: String,
    name: String,
    tier: String,
    status: &'static str,
    last_used: String,
    expires: String,
    should_rotate: bool,
    sparkline: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeyListPage {
    nav: Nav,
    rows: Vec<KeyRowView>,
    q: String,
    status: String,
    statuses: [&'static str; 5],
    page: usize,
    pages: usize,
    matched: usize,
    prev_link: Option<String>,
    next_link: Option<String>,
    done: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    q: Option<String>,
    status: Option<String>,
    page: Option<usize>,
    done: Option<String>,
}

fn list_link(q: &str, status: &str, page: usize) -> String {
    let mut link = format!("/ui/keys?page={page}");
    for (name, value) in [("q", q), ("status", status)] {
        if !value.is_empty() {
            link.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    link
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The keys, searched (name, id or owner) and filtered by status in the process, a page at a time.
pub(crate) async fn key_list(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let Ok(Query(query)) = query else {
        return error_page(StatusCode::UNPROCESSABLE_ENTITY, "The search is not valid.", true);
    };
    let q = query.q.unwrap_or_default().trim().to_owned();
    let status = query.status.unwrap_or_default();
    let needle = q.to_lowercase();
    let mut all = Vec::new();
    let mut after = None;
    while (all.len() as i64) < LIST_SCAN {
        let batch = match state.service.list(after, 1_000).await {
            Ok(batch) => batch,
            Err(error) => return service_error(error),
        };
        let full = batch.len() == 1_000;
        after = batch.last().map(|view| view.row.id);
        all.extend(batch.into_iter().filter(|view| {
            (status.is_empty() || view.status == status)
                && (needle.is_empty()
                    || view.row.name.to_lowercase().contains(&needle)
                    || view.row.id.to_string().to_lowercase().contains(&needle)
                    || view.row.owner.as_deref().is_some_and(|o| o.to_lowercase().contains(&needle)))
        }));
        if !full {
            break;
        }
    }
    let matched = all.len();
    let pages = matched.div_ceil(PAGE_SIZE).max(1);
    let page_no = query.page.unwrap_or(1).clamp(1, pages);
    let now = state.service.clock().now();
    let mut rows = Vec::new();
    for view in all.into_iter().skip((page_no - 1) * PAGE_SIZE).take(PAGE_SIZE) {
        let usage = match state.service.key_usage(view.row.id, last_day(now)).await {
            Ok(usage) => usage,
            Err(error) => return service_error(error),
        };
        rows.push(KeyRowView {
            id: view.row.id.to_string(),
            sparkline: charts::sparkline(&usage.series, &format!("requests per hour, last 24 h, {}", view.row.name)),
            name: view.row.name,
            tier: view.row.tier,
            status: view.status,
            last_used: time(view.row.last_used_at),
            expires: time(view.row.expires_at),
            should_rotate: view.should_rotate,
        });
    }
    page(
        StatusCode::OK,
        &KeyListPage {
            nav: Nav::of(&op),
            rows,
            prev_link: (page_no > 1).then(|| list_link(&q, &status, page_no - 1)),
            next_link: (page_no < pages).then(|| list_link(&q, &status, page_no + 1)),
            q,
            status,
            statuses: ["active", "disabled", "expired", "revoked", ""],
            page: page_no,
            pages,
            matched,
            done: notice(query.done),
        },
    )
}

#[derive(Template)]
#[template(path = "new_key.html")]
struct NewKeyPage {
    nav: Nav,
}

pub(crate) async fn new_key_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    match signed_in(&state, &headers).await {
        Ok(op) if op.can(AdminScope::KeysWrite) => page(StatusCode::OK, &NewKeyPage { nav: Nav::of(&op) }),
        Ok(_) => error_page(StatusCode::FORBIDDEN, "This admin key lacks admin:keys:write.", true),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
pub(crate) struct CreateForm {
    csrf: String,
    name: String,
    tier: String,
    permissions: String,
    expires_in_days: Option<String>,
    owner: Option<String>,
}

pub(crate) async fn create_key(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return bad_form(&rejection),
    };
    let op = match may_change(&state, &headers, &form.csrf, Some(AdminScope::KeysWrite)).await {
        Ok(op) => op,
        Err(response) => return response,
    };
    let expires_in_days = match non_empty(form.expires_in_days).map(|d| d.parse::<i64>()).transpose() {
        Ok(days) => days,
        Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, "Expiry must be a number of days.", true),
    };
    let request = NewKey {
        name: form.name,
        tier: non_empty(Some(form.tier)).unwrap_or_else(|| "default".into()),
        permissions: permission_list(&form.permissions),
        expires_in_days,
        region: None,
        owner: non_empty(form.owner),
        metadata: None,
    };
    match state.service.create(&op.actor(), request).await {
        Ok(created) => shown(
            &op,
            StatusCode::CREATED,
            "Key created",
            created.view.row.id,
            created.key.expose(),
            format!("{} ({})", created.view.row.name, created.view.row.tier),
        ),
        Err(error) => service_error(error),
    }
}
