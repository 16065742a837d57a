//! Infection reports, normalised across ICAP vendors.
//!
//! Every vendor says "found something" differently: c-icap and Symantec use
//! `X-Infection-Found: Type=0; Resolution=2; Threat=NAME;`, Kaspersky and
//! others `X-Virus-ID`, some `X-Virus-Name`, McAfee/ESET
//! `X-Violations-Found` with folded detail lines, Sophos/OPSWAT
//! `X-Block-Reason`, others only `X-Response-Info: Blocked` or an
//! encapsulated 403. Any of them means infected.

use super::wire::ResponseHead;

/// Threat names found in `head`, or `None` if it reports no infection.
/// `http_status` is the encapsulated HTTP status of a 200 answer.
pub fn threats(head: &ResponseHead, http_status: Option<u16>) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    let mut reported = false;
    let mut add = |v: &str| {
        for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
    };
    for (name, value) in &head.headers {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "x-infection-found" => {
                reported = true;
                // "Type=0; Resolution=2; Threat=EICAR-Test;"
                let threat = value
                    .split(';')
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("threat"))
                    .map(|(_, v)| v.trim());
                add(threat.unwrap_or(value));
            }
            "x-virus-id" | "x-virus-name" => {
                reported = true;
                add(value);
            }
            "x-violations-found" => {
                // "N" then per violation: filename, threat, id, disposition.
                let mut lines = value.lines();
                let count: usize = lines.next().and_then(|c| c.trim().parse().ok()).unwrap_or(1);
                if count > 0 {
                    reported = true;
                    let rest: Vec<&str> = lines.collect();
                    for v in rest.chunks(4) {
                        add(v.get(1).copied().unwrap_or("unknown threat"));
                    }
                }
            }
            "x-block-reason" => {
                reported = true;
                add(value);
            }
            "x-response-info" if value.trim().eq_ignore_ascii_case("blocked") => reported = true,
            _ => {}
        }
    }
    if http_status == Some(403) {
        reported = true;
    }
    if !reported {
        return None;
    }
    if names.is_empty() {
        names.push("unknown threat (blocked by the ICAP service)".into());
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::icap::wire::parse_head;

    fn t(head: &str, http: Option<u16>) -> Option<Vec<String>> {
        threats(&parse_head(head.as_bytes()).unwrap(), http)
    }

    #[test]
    fn c_icap_and_symantec() {
        assert_eq!(
            t(
                "ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2; Threat=Test.EICAR.NDB.UNOFFICIAL;\r\n\r\n",
                Some(403)
            ),
            Some(vec!["Test.EICAR.NDB.UNOFFICIAL".into()])
        );
    }

    #[test]
    fn virus_id_lists_are_split() {
        assert_eq!(
            t("ICAP/1.0 200 OK\r\nX-Virus-ID: EICAR-Test-File, Trojan.Gen\r\n\r\n", None),
            Some(vec!["EICAR-Test-File".into(), "Trojan.Gen".into()])
        );
        assert_eq!(t("ICAP/1.0 200 OK\r\nX-Virus-Name: Eicar\r\n\r\n", None), Some(vec!["Eicar".into()]));
    }

    #[test]
    fn violations_found_with_folded_lines() {
        let h = "ICAP/1.0 200 OK\r\nX-Violations-Found: 2\r\n\ta.com\r\n\tEICAR test file\r\n\t111\r\n\t0\r\n\tb.exe\r\n\tW32/Bad\r\n\t222\r\n\t0\r\n\r\n";
        assert_eq!(t(h, None), Some(vec!["EICAR test file".into(), "W32/Bad".into()]));
        assert_eq!(t("ICAP/1.0 200 OK\r\nX-Violations-Found: 0\r\n\r\n", Some(200)), None);
    }

    #[test]
    fn block_reason_response_info_and_bare_403() {
        assert_eq!(
            t("ICAP/1.0 200 OK\r\nX-Block-Reason: Malware detected\r\n\r\n", None),
            Some(vec!["Malware detected".into()])
        );
        assert!(t("ICAP/1.0 200 OK\r\nX-Response-Info: Blocked\r\n\r\n", None).is_some());
        assert!(t("ICAP/1.0 200 OK\r\n\r\n", Some(403)).is_some());
        assert_eq!(t("ICAP/1.0 200 OK\r\nX-Response-Info: Passed\r\n\r\n", Some(200)), None);
    }
}
