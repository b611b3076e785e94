//! `POST /v1/usage` (README "Usage (last used)").

use super::*;

// ---- usage (README "Usage (last used)") ----

/// `POST /v1/usage`, both modes: db mode adds to each key's `uses` and `last_used_at`
/// in the database, file mode in keys.usage.json. The report is checked as the core
/// reads it (400 naming the field); a time ahead of the service's clock is taken as now.
pub(super) async fn usage(
    headers: HeaderMap,
    Gateway(app): Gateway,
    body: Body,
) -> ApiResult<StatusCode> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a usage report is at most {USAGE_BODY_LIMIT} bytes"),
        )
    };
    // Refused for what it says it holds, before it is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > USAGE_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, USAGE_BODY_LIMIT)
        .await
        .map_err(|_| too_large())?;
    let report = UsageReport::parse(&bytes).map_err(|problems| {
        let described: Vec<String> = problems.iter().map(ToString::to_string).collect();
        ApiError::bad(described.join("; "))
    })?;
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    if let Some(store) = app.admin.clone() {
        let reports: Vec<Usage> = report
            .entries
            .iter()
            .map(|e| Usage {
                hash: e.hash.to_hex(),
                count: e.count,
                last_used_at: e.last_used.min(now).unix_seconds(),
            })
            .collect();
        blocking(move || store.record_usage(&reports)).await?;
    } else if let Some(file) = app.usage_file.clone() {
        blocking(move || file.record(&report, now)).await?;
    } else {
        return Err(ApiError::not_found("this key service keeps no usage"));
    }
    Ok(StatusCode::NO_CONTENT)
}
