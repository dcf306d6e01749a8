//! `sitrep demo --national --once`, the real binary: 24 nodes, every region's
//! report in both authorities' national roll-ups, the classified one only in
//! the secure feed, Region Norrbotten overdue.

use std::process::Command;

#[test]
fn the_national_demo_fills_both_authorities_rollups_and_exits_zero() {
    let o = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["demo", "--national", "--once"])
        .env_remove("SITREP_LOG")
        .output()
        .expect("run sitrep");
    let out = String::from_utf8_lossy(&o.stdout);
    let text = format!("stdout:\n{out}\nstderr:\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    assert!(
        out.contains("national-open at socialstyrelsen: 21/21 regions reporting"),
        "{text}"
    );
    assert!(
        out.contains("national-open at msb: 21/21 regions reporting, label SENSITIVE"),
        "{text}"
    );
    assert!(
        out.contains("national-secure at socialstyrelsen: label RESTRICTED, 1 withheld"),
        "{text}"
    );
    // The table: one row per region, only Norrbotten overdue.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.len() > 5 && l.as_bytes()[..2].iter().all(u8::is_ascii_digit) && l.as_bytes()[2] == b' '
        })
        .collect();
    assert_eq!(rows.len(), 21, "{text}");
    let overdue: Vec<&&str> = rows.iter().filter(|l| l.contains("OVERDUE")).collect();
    assert_eq!(overdue.len(), 1, "{text}");
    assert!(
        overdue[0].starts_with("25   Region Norrbotten") && overdue[0].ends_with("OVERDUE"),
        "{text}"
    );
    assert!(
        out.contains("TOTAL 21/21 regions reporting, 1 overdue, 0 stale, 0 never reported"),
        "{text}"
    );
}
