//! Reads the few things packaging needs from a module: that it is one, which features the
//! compiler declared (the `target_features` custom section) and which names it exports. Full
//! validation is `wasm-opt`'s job.

const MAGIC: &[u8; 4] = b"\0asm";
const VERSION_1: &[u8; 4] = &[1, 0, 0, 0];
const CUSTOM_SECTION: u8 = 0;
const EXPORT_SECTION: u8 = 7;

/// Checks the 8-byte header of a core wasm module (magic and version 1).
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some(h) if h[..4] == MAGIC[..] && h[4..] == VERSION_1[..] => Ok(()),
        Some(h) if h[..4] == MAGIC[..] => Err(format!("unsupported version {:?}", &h[4..])),
        _ => Err("missing the \\0asm magic number".to_string()),
    }
}

/// One entry of the `target_features` section, e.g. `+bulk-memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFeature {
    /// `+` used, `-` disallowed, `=` required.
    pub prefix: char,
    /// LLVM's name, e.g. `nontrapping-fptoint`.
    pub name: String,
}

/// The features listed in the module's `target_features` section; `None` if it has none.
pub fn target_features(bytes: &[u8]) -> Result<Option<Vec<TargetFeature>>, String> {
    let Some(mut r) = sections(bytes)?
        .into_iter()
        .find(|s| s.id == CUSTOM_SECTION && s.custom_name() == Some("target_features"))
        .and_then(|s| s.custom_payload())
    else {
        return Ok(None);
    };
    let count = r.u32()?;
    let mut features = Vec::new();
    for _ in 0..count {
        let prefix = char::from(r.byte()?);
        let name = r.name()?;
        features.push(TargetFeature { prefix, name });
    }
    Ok(Some(features))
}

/// The names the module exports, sorted.
pub fn export_names(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for section in sections(bytes)?
        .into_iter()
        .filter(|s| s.id == EXPORT_SECTION)
    {
        let mut r = Reader(section.payload);
        for _ in 0..r.u32()? {
            names.push(r.name()?);
            r.byte()?; // kind
            r.u32()?; // index
        }
    }
    names.sort();
    Ok(names)
}

/// The names of the module's custom sections, in order.
pub fn custom_section_names(bytes: &[u8]) -> Result<Vec<String>, String> {
    Ok(sections(bytes)?
        .iter()
        .filter(|s| s.id == CUSTOM_SECTION)
        .filter_map(|s| s.custom_name().map(str::to_string))
        .collect())
}

struct Section<'a> {
    id: u8,
    payload: &'a [u8],
}

impl<'a> Section<'a> {
    fn custom_name(&self) -> Option<&'a str> {
        Reader(self.payload).name_ref().ok()
    }

    fn custom_payload(&self) -> Option<Reader<'a>> {
        let mut r = Reader(self.payload);
        r.name_ref().ok()?;
        Some(r)
    }
}

fn sections(bytes: &[u8]) -> Result<Vec<Section<'_>>, String> {
    check_header(bytes)?;
    let mut r = Reader(&bytes[8..]);
    let mut sections = Vec::new();
    while !r.0.is_empty() {
        let id = r.byte()?;
        let len = r.u32()? as usize;
        let payload = r.take(len)?;
        sections.push(Section { id, payload });
    }
    Ok(sections)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("truncated module".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// An unsigned LEB128 of at most 5 bytes.
    fn u32(&mut self) -> Result<u32, String> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| "LEB128 overflows u32".to_string());
            }
        }
        Err("LEB128 longer than 5 bytes".to_string())
    }

    fn name_ref(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "name is not UTF-8".to_string())
    }

    fn name(&mut self) -> Result<String, String> {
        self.name_ref().map(str::to_string)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A module with a `target_features` section listing `features` and one exported function
    /// per name in `exports` (all sharing one `() -> ()` type).
    pub(crate) fn module(features: &[&str], exports: &[&str]) -> Vec<u8> {
        fn section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
            out.push(id);
            leb(out, payload.len());
            out.extend_from_slice(payload);
        }
        fn leb(out: &mut Vec<u8>, mut n: usize) {
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    return;
                }
                out.push(b | 0x80);
            }
        }
        fn name(out: &mut Vec<u8>, s: &str) {
            leb(out, s.len());
            out.extend_from_slice(s.as_bytes());
        }

        let mut m = b"\0asm\x01\0\0\0".to_vec();
        if !exports.is_empty() {
            section(&mut m, 1, &[1, 0x60, 0, 0]); // one type: () -> ()
            let mut funcs = Vec::new();
            leb(&mut funcs, exports.len());
            funcs.extend(std::iter::repeat_n(0, exports.len()));
            section(&mut m, 3, &funcs);
            let mut exps = Vec::new();
            leb(&mut exps, exports.len());
            for (i, e) in exports.iter().enumerate() {
                name(&mut exps, e);
                exps.push(0); // func
                leb(&mut exps, i);
            }
            section(&mut m, 7, &exps);
            let mut code = Vec::new();
            leb(&mut code, exports.len());
            for _ in exports {
                code.extend_from_slice(&[2, 0, 0x0b]); // size 2: no locals, end
            }
            section(&mut m, 10, &code);
        }
        let mut tf = Vec::new();
        name(&mut tf, "target_features");
        leb(&mut tf, features.len());
        for f in features {
            tf.push(b'+');
            name(&mut tf, f);
        }
        section(&mut m, 0, &tf);
        m
    }

    #[test]
    fn target_features_and_exports_are_read_back() {
        let m = module(&["sign-ext", "bulk-memory"], &["b", "a"]);
        let features = target_features(&m).unwrap().unwrap();
        let names: Vec<_> = features
            .iter()
            .map(|f| (f.prefix, f.name.as_str()))
            .collect();
        assert_eq!(names, [('+', "sign-ext"), ('+', "bulk-memory")]);
        assert_eq!(export_names(&m).unwrap(), ["a", "b"]);
        assert_eq!(custom_section_names(&m).unwrap(), ["target_features"]);
    }

    #[test]
    fn a_module_without_target_features_reports_none() {
        assert_eq!(target_features(b"\0asm\x01\0\0\0").unwrap(), None);
    }

    #[test]
    fn non_modules_and_truncated_modules_are_errors_not_panics() {
        assert!(check_header(b"\x7fELF\x02\x01\x01\0").is_err());
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_err());
        assert!(check_header(b"\0as").is_err());
        let mut m = module(&["sign-ext"], &["a"]);
        m.truncate(m.len() - 3);
        assert!(target_features(&m).is_err());
        assert!(export_names(b"\0asm\x01\0\0\0\x07\xff\xff\xff\xff\xff\xff").is_err());
    }
}
