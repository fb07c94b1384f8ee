//! The invoices that break one of lnd's unique constraints, for any SQL
//! dialect: the queries that find two rows sharing a value, and the
//! sentence that names them. Each backend runs the queries in its own way
//! (SQLite: `super::sqlite::find_duplicate`).

/// The checks behind [`find_duplicate`], for any SQL dialect: (what is
/// shared, a query for the two rows sharing it: invoice id and the value
/// as text), with `hex(column)` written by the dialect's `hex`.
pub fn duplicate_checks(hex: fn(&str) -> String) -> [(&'static str, String); 5] {
    [
        ("payment hash", format!("SELECT i.id, {} FROM invoices i WHERE i.hash IN (SELECT hash FROM invoices GROUP BY hash HAVING count(*) > 1) ORDER BY i.hash, i.id LIMIT 2", hex("i.hash"))),
        ("payment address", format!("SELECT i.id, {} FROM invoices i WHERE i.payment_addr IN (SELECT payment_addr FROM invoices WHERE payment_addr IS NOT NULL GROUP BY payment_addr HAVING count(*) > 1) ORDER BY i.payment_addr, i.id LIMIT 2", hex("i.payment_addr"))),
        ("payment request", format!("SELECT i.id, {} FROM invoices i WHERE i.payment_request_hash IN (SELECT payment_request_hash FROM invoices WHERE payment_request_hash IS NOT NULL GROUP BY payment_request_hash HAVING count(*) > 1) ORDER BY i.payment_request_hash, i.id LIMIT 2", hex("i.payment_request_hash"))),
        ("HTLC circuit key (channel id, HTLC id)", "SELECT h.invoice_id, h.chan_id || ':' || h.htlc_id FROM invoice_htlcs h WHERE (h.chan_id, h.htlc_id) IN (SELECT chan_id, htlc_id FROM invoice_htlcs GROUP BY chan_id, htlc_id HAVING count(*) > 1) ORDER BY h.chan_id, h.htlc_id, h.invoice_id LIMIT 2".to_string()),
        ("AMP set id", format!("WITH s(set_id, invoice_id) AS (SELECT set_id, invoice_id FROM amp_sub_invoices UNION ALL SELECT set_id, invoice_id FROM oneway_amp_staging) SELECT invoice_id, {} FROM s WHERE set_id IN (SELECT set_id FROM s GROUP BY set_id HAVING count(*) > 1) ORDER BY set_id, invoice_id LIMIT 2", hex("set_id"))),
    ]
}

/// What [`find_duplicate`] reports for two rows sharing `value` (`what`):
/// the later one's KV number (its add index `second` when it has no map
/// row), the other's KV number when it has one, and the sentence.
pub fn duplicate_found(
    what: &str,
    value: &str,
    (first, second): (i64, i64),
    (a, b): (Option<i64>, Option<i64>),
) -> (u32, Option<u32>, String) {
    let a_text = a.map_or_else(
        || format!("add index {first}"),
        |a| format!("invoice {:08x}", a as u32),
    );
    (
        b.unwrap_or(second) as u32,
        a.map(|a| a as u32),
        format!(
            "it shares its {what} {} with {a_text}; lnd's native schema requires it to be unique",
            value.to_lowercase()
        ),
    )
}
