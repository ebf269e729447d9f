//! XML on the wire: writing documents from their JSON shape (field order = schema order),
//! and reading request bodies leniently, as a JAXB server would.

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde_json::Value;

pub const UFORGE_NS: &str = "http://www.usharesoft.com/uforge";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Nesting deeper than this is refused: no real document comes close.
pub const MAX_DEPTH: usize = 32;

/// The concrete type of abstract elements: the only cloud target is OpenStack.
fn xsi_type(element: &str) -> Option<&'static str> {
    match element {
        "publishImage" => Some("ns0:PublishImageOpenStack"),
        "credAccount" => Some("ns0:CredAccountOpenStack"),
        _ => None,
    }
}

/// Writes `doc` (a JSON object whose keys are in schema order) as the document `root`:
/// qualified root, unqualified children, arrays as repeated elements, nulls left out.
pub fn to_xml(root: &str, doc: &Value) -> String {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#);
    out.push_str(&format!(
        r#"<ns0:{root} xmlns:ns0="{UFORGE_NS}" xmlns:xsi="{XSI_NS}""#
    ));
    if let Some(t) = xsi_type(root) {
        out.push_str(&format!(r#" xsi:type="{t}""#));
    }
    out.push('>');
    write_children(&mut out, doc);
    out.push_str(&format!("</ns0:{root}>"));
    out
}

fn write_children(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            for (name, child) in map {
                write_element(out, name, child);
            }
        }
        other => out.push_str(&escape(&scalar_text(other))),
    }
}

fn write_element(out: &mut String, name: &str, value: &Value) {
    match value {
        Value::Null => {}
        Value::Array(items) => items.iter().for_each(|item| write_element(out, name, item)),
        _ => {
            out.push('<');
            out.push_str(name);
            if let Some(t) = xsi_type(name) {
                out.push_str(&format!(r#" xsi:type="{t}""#));
            }
            out.push('>');
            write_children(out, value);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn escape(text: &str) -> String {
    // XML 1.0 cannot carry most control characters at all, even escaped: drop them.
    let clean: String = text
        .chars()
        .filter(|&c| {
            (c == '\t' || c == '\n' || c == '\r' || c >= ' ') && c != '\u{FFFE}' && c != '\u{FFFF}'
        })
        .collect();
    quick_xml::escape::escape(clean.as_str()).into_owned()
}

/// An element of a request body: local name (prefix dropped), its `xsi:type` (as written,
/// prefix kept), text, children.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Element {
    pub name: String,
    pub xsi_type: Option<String>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Trimmed text of a child; `None` when absent or empty ("empty fields are left out").
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name)
            .map(|c| c.text.trim())
            .filter(|t| !t.is_empty())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum XmlError {
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("XML with a DTD or entity declarations is not accepted")]
    Dtd,
    #[error("XML nested deeper than {MAX_DEPTH} elements is not accepted")]
    TooDeep,
    #[error("the XML body is empty")]
    Empty,
}

/// Parses a body without resolving namespaces: prefixes are dropped, so an undeclared
/// `xsi:` prefix (the seed example) is accepted. DTDs are refused, so no entity can expand.
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    let mut reader = Reader::from_reader(body);
    // Text is kept as sent (a password may start or end with a space); `text_of` trims.
    reader.config_mut().trim_text(false);
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            XmlError::Malformed(format!("{e} at byte {}", reader.buffer_position()))
        })?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(Element {
                    name: start.local_name().as_ref().to_string(),
                    xsi_type: xsi_type_of(&start)?,
                    ..Default::default()
                });
            }
            Event::End(_) => {
                let done = stack
                    .pop()
                    .ok_or_else(|| XmlError::Malformed("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(text) => append_text(&mut stack, &text.xml10_content())?,
            // Since quick-xml 0.38 references come apart from the text around them.
            Event::GeneralRef(reference) => {
                append_text(&mut stack, &resolve_reference(&reference)?)?
            }
            Event::CData(data) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&data.xml10_content());
                }
            }
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::Empty(_) => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed(
            "the document ends inside an element".into(),
        ));
    }
    root.ok_or(XmlError::Empty)
}

/// Text goes to the open element; outside the root only whitespace may stand.
fn append_text(stack: &mut [Element], text: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(el) => el.text.push_str(text),
        None if text.trim().is_empty() => {}
        None => return Err(XmlError::Malformed("text outside the root element".into())),
    }
    Ok(())
}

/// `&#…;` and the five predefined entities; with DTDs refused, no other entity exists.
fn resolve_reference(reference: &BytesRef) -> Result<String, XmlError> {
    if let Some(c) = reference
        .resolve_char_ref()
        .map_err(|e| XmlError::Malformed(e.to_string()))?
    {
        return Ok(c.to_string());
    }
    quick_xml::escape::resolve_predefined_entity(reference)
        .map(str::to_string)
        .ok_or_else(|| XmlError::Malformed(format!("undefined entity &{};", &**reference)))
}

/// The value of a prefixed `type` attribute. Prefixes are not resolved (the seed's `xsi:` is
/// not even declared), so any prefix counts. Every attribute is read, so a tag with repeated
/// or broken attributes is refused (quick-xml ≥ 0.41 does this in linear time:
/// RUSTSEC-2026-0194).
fn xsi_type_of(start: &BytesStart) -> Result<Option<String>, XmlError> {
    let mut found = None;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| XmlError::Malformed(e.to_string()))?;
        let (local, prefix) = attribute.key.decompose();
        if local.as_ref() == "type" && prefix.is_some() {
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| XmlError::Malformed(e.to_string()))?;
            if found.replace(value.trim().to_string()).is_some() {
                return Err(XmlError::Malformed(format!(
                    "<{}> carries more than one type attribute",
                    start.name().as_ref()
                )));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_qualified_root_ordered_children_and_xsi_types() {
        let doc =
            json!({"dbId": 3, "credAccount": {"login": "a<b"}, "skip": null, "publicImage": false});
        let xml = to_xml("publishImage", &doc);
        assert!(xml.contains(r#"<ns0:publishImage xmlns:ns0="http://www.usharesoft.com/uforge""#));
        assert!(xml.contains(r#"xsi:type="ns0:PublishImageOpenStack""#));
        assert!(xml.contains(
            r#"<dbId>3</dbId><credAccount xsi:type="ns0:CredAccountOpenStack"><login>a&lt;b</login></credAccount><publicImage>false</publicImage>"#
        ));
        assert!(!xml.contains("skip"));
    }

    #[test]
    fn arrays_become_repeated_elements() {
        let xml = to_xml(
            "statuses",
            &json!({"total": 2, "statuses": {"status": [{"percentage": 1}, {"percentage": 2}]}}),
        );
        assert!(xml.contains("<statuses><status><percentage>1</percentage></status><status><percentage>2</percentage></status></statuses>"));
    }

    #[test]
    fn reads_undeclared_prefixes_and_drops_them() {
        let root = parse(b"<ns0:publishImage xmlns:ns0=\"x\"><xsi:type></xsi:type><displayName> A &amp; B </displayName></ns0:publishImage>").unwrap();
        assert_eq!(root.name, "publishImage");
        assert_eq!(root.text_of("displayName"), Some("A & B"));
        assert_eq!(root.text_of("type"), None);
    }

    #[test]
    fn reads_references_and_type_attributes() {
        let root = parse(
            br#"<p xsi:type="ns0:PublishImageOpenStack"><a t="1">x &lt;&#65;&#x42;&amp;&apos;&quot;&gt; y<![CDATA[<z>]]></a><b type="plain"/></p>"#,
        )
        .unwrap();
        assert_eq!(root.xsi_type.as_deref(), Some("ns0:PublishImageOpenStack"));
        let a = root.child("a").unwrap();
        assert_eq!(
            (a.text.as_str(), a.xsi_type.as_deref()),
            ("x <AB&'\"> y<z>", None)
        );
        // An unprefixed `type` is some other attribute.
        assert_eq!(root.child("b").unwrap().xsi_type, None);
        assert!(matches!(parse(b"<a>&#0;</a>"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            parse(b"<a>x</a>&amp;"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_repeated_attributes_in_linear_time() {
        assert!(matches!(
            parse(br#"<a x="1" x="2"></a>"#),
            Err(XmlError::Malformed(_))
        ));
        // RUSTSEC-2026-0194: before quick-xml 0.41 this tag took seconds (quadratic check).
        let many: String = (0..50_000).map(|i| format!(" a{i}=\"\"")).collect();
        let started = std::time::Instant::now();
        assert!(parse(format!("<a{many}></a>").as_bytes()).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn keeps_text_as_sent_and_drops_characters_xml_cannot_carry() {
        let root =
            parse(b"<?xml version=\"1.0\"?>\n<a>\n  <password> pw </password>\n</a>\n").unwrap();
        assert_eq!(root.child("password").unwrap().text, " pw ");
        let xml = to_xml("status", &json!({"message": "a\u{1}b\u{FFFE}c"}));
        assert!(xml.contains("<message>abc</message>"), "{xml}");
    }

    #[test]
    fn refuses_dtds_and_entity_bombs() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><a>&lol2;</a>"#;
        assert_eq!(parse(bomb), Err(XmlError::Dtd));
        assert!(matches!(
            parse(b"<a>&undefined;</a>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn refuses_deep_nesting_and_broken_documents() {
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
        assert!(matches!(parse(b"<a><b></a>"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            parse(b"<a></a><b></b>"),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(parse(b"  "), Err(XmlError::Empty));
    }
}
