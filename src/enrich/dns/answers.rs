//! One DNS response into the addresses it gives, each with the name that was asked for (the
//! head of any CNAME chain) and how long the answer may be kept. Decoding is hickory-proto's.
use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{Name, RData};

/// CNAME links followed back from an address record; a longer chain is a loop or an attack.
const MAX_CHAIN: usize = 16;

/// An address record, under the name the resolving application asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub address: IpAddr,
    /// Lower case, without the root's trailing dot; IDNs stay in their ASCII (punycode) form.
    pub name: String,
    /// The smallest TTL along the chain: the answer is valid while every link is.
    pub ttl_secs: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("a DNS query, not a response")]
    NotAResponse,
}

/// The A and AAAA answers of one response; empty for a response without any (NXDOMAIN, MX...).
/// Only records whose CNAME chain leads back to a name the response says was asked are taken, as
/// a resolver would: a record about some other name, or a chain that loops, names nothing.
pub fn answers(message: &[u8]) -> Result<Vec<Answer>, AnswerError> {
    let message = Message::from_vec(message).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    if message.metadata.message_type != MessageType::Response {
        return Err(AnswerError::NotAResponse);
    }
    let asked: Vec<String> = message.queries.iter().map(|q| plain_name(q.name())).collect();
    // alias target -> (alias, TTL): walked backwards from each address record
    let aliases: HashMap<String, (String, u32)> = message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(target) => Some((plain_name(&target.0), (plain_name(&r.name), r.ttl))),
            _ => None,
        })
        .collect();
    let answers = message
        .answers
        .iter()
        .filter_map(|r| {
            let address = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            let (mut name, mut ttl_secs) = (plain_name(&r.name), r.ttl);
            let mut links = 0;
            while let Some((alias, alias_ttl)) = aliases.get(&name) {
                links += 1;
                if links > MAX_CHAIN {
                    return None;
                }
                name.clone_from(alias);
                ttl_secs = ttl_secs.min(*alias_ttl);
            }
            // a response that names no question (some proxies strip it) is taken as it is
            if !asked.is_empty() && !asked.contains(&name) {
                return None;
            }
            Some(Answer {
                address,
                name,
                ttl_secs,
            })
        })
        .collect();
    Ok(answers)
}

fn plain_name(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.len() > 1 && text.ends_with('.') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record, RecordType};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("name")
    }

    fn response(records: Vec<Record>) -> Vec<u8> {
        response_to("www.example.com.", records)
    }

    fn response_to(question: &str, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        m.add_query(Query::query(name(question), RecordType::A));
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn an_address_record_gives_its_owner_name_and_ttl() {
        let bytes = response_to(
            "api.example.com.",
            vec![Record::from_rdata(
                name("API.Example.com."),
                300,
                RData::A(A::new(10, 1, 2, 3)),
            )],
        );
        assert_eq!(
            answers(&bytes).expect("parsed"),
            vec![Answer {
                address: "10.1.2.3".parse().expect("ip"),
                name: "api.example.com".into(),
                ttl_secs: 300
            }]
        );
    }

    #[test]
    fn a_cname_chain_is_followed_back_to_the_name_asked_for_with_the_smallest_ttl() {
        let bytes = response(vec![
            Record::from_rdata(
                name("www.example.com."),
                600,
                RData::CNAME(CNAME(name("edge.cdn.net."))),
            ),
            Record::from_rdata(name("edge.cdn.net."), 30, RData::CNAME(CNAME(name("pop7.cdn.net.")))),
            Record::from_rdata(
                name("pop7.cdn.net."),
                120,
                RData::AAAA(AAAA::from_str("fd00::7").expect("v6")),
            ),
        ]);
        let got = answers(&bytes).expect("parsed");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "www.example.com");
        assert_eq!(got[0].ttl_secs, 30);
        assert_eq!(got[0].address, "fd00::7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_cname_loop_names_nothing() {
        let bytes = response_to(
            "a.test.",
            vec![
                Record::from_rdata(name("a.test."), 60, RData::CNAME(CNAME(name("b.test.")))),
                Record::from_rdata(name("b.test."), 60, RData::CNAME(CNAME(name("a.test.")))),
                Record::from_rdata(name("a.test."), 60, RData::A(A::new(10, 0, 0, 1))),
            ],
        );
        assert_eq!(answers(&bytes).expect("parsed"), vec![]);
    }

    #[test]
    fn a_record_about_a_name_not_asked_is_not_taken() {
        let bytes = response_to(
            "www.example.com.",
            vec![
                Record::from_rdata(name("www.example.com."), 60, RData::A(A::new(10, 0, 0, 1))),
                Record::from_rdata(name("bank.example.net."), 60, RData::A(A::new(10, 0, 0, 2))),
            ],
        );
        let got = answers(&bytes).expect("parsed");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address, "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn truncated_garbage_and_queries_are_errors() {
        let bytes = response(vec![Record::from_rdata(
            name("api.example.com."),
            300,
            RData::A(A::new(10, 1, 2, 3)),
        )]);
        assert!(matches!(
            answers(&bytes[..bytes.len() - 3]),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(answers(&[0xff; 7]), Err(AnswerError::Malformed(_))));
        let query = Message::query().to_vec().expect("encode");
        assert_eq!(answers(&query), Err(AnswerError::NotAResponse));
    }
}
