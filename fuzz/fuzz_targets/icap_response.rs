//! ICAP response heads (`gateway::scan::icap::wire::parse_head`), their
//! Encapsulated offsets, the vendor-neutral infection report
//! (`infection::threats`) and the status of an encapsulated HTTP head
//! (`wire::http_status`) on arbitrary bytes.

#![no_main]

use gateway::scan::icap::{infection, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The client parses the ICAP head up to its blank line and hands what
    // follows (an encapsulated HTTP head, for a 200) to http_status.
    let split = gateway::wire::head_end(data).unwrap_or(data.len());
    let (icap, rest) = data.split_at(split);
    for head in [data, icap] {
        let Ok(h) = wire::parse_head(head) else { continue };
        assert!((100..600).contains(&h.status));
        for (name, _) in &h.headers {
            assert!(!name.is_empty() && !name.contains(' '));
        }
        if let Ok(parts) = h.encapsulated() {
            for (name, _) in parts {
                assert_eq!(name, name.to_ascii_lowercase());
            }
        }
        let _ = h.get("ISTag");
        for status in [None, Some(200), Some(403)] {
            if let Some(names) = infection::threats(&h, status) {
                assert!(!names.is_empty(), "an infection with no name");
                for n in &names {
                    assert!(!n.is_empty());
                }
            } else {
                assert_ne!(status, Some(403), "an encapsulated 403 is always an infection");
            }
        }
    }
    for http in [data, rest] {
        let _ = wire::http_status(http);
    }
});
