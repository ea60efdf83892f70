//! Compensating statements: the user's SQL with named parameters, compiled to a store's own
//! placeholders.
//!
//! A statement names its parameters `:name`. Known names are `:repair_id` (the repair's
//! idempotency key, so a statement can be written to run once, e.g. by inserting it into a
//! table with a unique constraint), `:kind` (`missing`, `extra`, `changed`, `duplicate`), and
//! every key column and canonical column by its name (canonical's value at repair time, NULL
//! when canonical has no row). `::` (a PostgreSQL cast) and anything inside quotes or
//! comments is left alone. Values are always bound, never spliced.

/// One parameter of a compiled statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// The repair id.
    RepairId,
    /// The divergence kind.
    Kind,
    /// A column: key columns from the key, others from canonical's row.
    Column(String),
}

/// A statement with its named parameters replaced by placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The SQL, with the store's placeholders.
    pub sql: String,
    /// What each placeholder binds, in placeholder order (1-based: the first is `params[0]`).
    pub params: Vec<Param>,
}

/// Compiles `sql`: each distinct `:name` becomes `placeholder(n)`, numbered in order of first
/// appearance. `columns` are the names a statement may use besides `repair_id` and `kind`.
/// An unknown name is an error naming it.
pub fn compile(sql: &str, columns: &[String], placeholder: impl Fn(usize) -> String) -> Result<Compiled, String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut params: Vec<Param> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' | b'"' => {
                let end = closing_quote(bytes, i);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..].find("*/").map_or(bytes.len(), |n| i + 2 + n + 2);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b':' if bytes.get(i + 1) == Some(&b':') => {
                out.push_str("::");
                i += 2;
            }
            b':' if bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                    end += 1;
                }
                let name = &sql[start..end];
                let param = match name {
                    "repair_id" => Param::RepairId,
                    "kind" => Param::Kind,
                    _ if columns.iter().any(|c| c == name) => Param::Column(name.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown parameter :{name} (known: :repair_id, :kind, {})",
                            columns.iter().map(|c| format!(":{c}")).collect::<Vec<_>>().join(", ")
                        ));
                    }
                };
                let n = match params.iter().position(|p| *p == param) {
                    Some(at) => at + 1,
                    None => {
                        params.push(param);
                        params.len()
                    }
                };
                out.push_str(&placeholder(n));
                i = end;
            }
            _ => {
                // Copy one whole UTF-8 character.
                let len = sql[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&sql[i..i + len]);
                i += len;
            }
        }
    }
    Ok(Compiled { sql: out, params })
}

/// The index just past the quote that closes the one at `open` (a doubled quote is an
/// escaped one), or the end of the text.
fn closing_quote(bytes: &[u8], open: usize) -> usize {
    let quote = bytes[open];
    let mut i = open + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<String> {
        vec!["id".into(), "amount".into()]
    }

    #[test]
    fn names_become_numbered_placeholders() {
        let c = compile(
            "INSERT INTO fixes (repair_id, id, amount, note) VALUES (:repair_id, :id, :amount::numeric, ':id') \
             ON CONFLICT (repair_id) DO NOTHING -- :kind is not a parameter here\n; SELECT :id",
            &cols(),
            |n| format!("${n}"),
        )
        .unwrap();
        assert_eq!(
            c.sql,
            "INSERT INTO fixes (repair_id, id, amount, note) VALUES ($1, $2, $3::numeric, ':id') \
             ON CONFLICT (repair_id) DO NOTHING -- :kind is not a parameter here\n; SELECT $2"
        );
        assert_eq!(
            c.params,
            vec![
                Param::RepairId,
                Param::Column("id".into()),
                Param::Column("amount".into())
            ]
        );
    }

    #[test]
    fn quotes_comments_and_unicode_are_left_alone() {
        let c = compile(
            "UPDATE \"t:x\" SET n = 'it''s :id' /* :amount */ WHERE ä = :id",
            &cols(),
            |n| format!("?{n}"),
        )
        .unwrap();
        assert_eq!(c.sql, "UPDATE \"t:x\" SET n = 'it''s :id' /* :amount */ WHERE ä = ?1");
        assert_eq!(c.params, vec![Param::Column("id".into())]);
    }

    #[test]
    fn unknown_names_are_errors() {
        let e = compile("DELETE FROM t WHERE id = :idd", &cols(), |n| format!("${n}")).unwrap_err();
        assert!(e.contains(":idd") && e.contains(":repair_id"), "{e}");
    }
}
