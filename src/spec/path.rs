//! Where in the spec a value sits, e.g. `rules[1].domains[0].backends[2].ip`.
//!
//! A path is a chain of borrowed links on the stack, so walking 10,000 backends allocates nothing
//! until a value is actually wrong and its path is printed.

use std::fmt;

#[derive(Clone, Copy)]
pub enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    pub fn field(&'a self, name: &'static str) -> Path<'a> {
        Path::Field(self, name)
    }

    pub fn index(&'a self, i: usize) -> Path<'a> {
        Path::Index(self, i)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(parent, name) => {
                if matches!(parent, Path::Root) {
                    f.write_str(name)
                } else {
                    write!(f, "{parent}.{name}")
                }
            }
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_the_contract() {
        let root = Path::Root;
        let rules = root.field("rules");
        let r1 = rules.index(1);
        let d = r1.field("domains");
        let d0 = d.index(0);
        let b = d0.field("backends");
        let b2 = b.index(2);
        assert_eq!(
            b2.field("ip").to_string(),
            "rules[1].domains[0].backends[2].ip"
        );
        assert_eq!(root.field("identifier").to_string(), "identifier");
        assert_eq!(root.to_string(), "");
    }
}
