//! A link-prediction dataset directory: `train.txt`, `valid.txt`, `test.txt`, one
//! `head<TAB>relation<TAB>tail` per line (the layout of WN18RR, FB15k-237 and most benchmarks).
use std::collections::HashMap;
use std::path::Path;

use crate::EmbedError;

/// Triples as ids, with the dictionaries that name them. Ids cover all three splits (the
/// standard protocol ranks against every entity of the dataset).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub entities: Vec<String>,
    pub relations: Vec<String>,
    pub train: Vec<[u32; 3]>,
    pub valid: Vec<[u32; 3]>,
    pub test: Vec<[u32; 3]>,
}

#[derive(Default)]
struct Dictionary {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Dictionary {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        id
    }
}

impl Dataset {
    /// Reads `dir/{train,valid,test}.txt`.
    ///
    /// # Errors
    /// `Io` for a missing file, `InvalidData` naming file and line for a malformed line.
    pub fn load_dir(dir: &Path) -> Result<Self, EmbedError> {
        Self::load_files(
            &dir.join("train.txt"),
            &dir.join("valid.txt"),
            &dir.join("test.txt"),
        )
    }

    /// Reads three tab-separated files.
    ///
    /// # Errors
    /// As [`Dataset::load_dir`].
    pub fn load_files(train: &Path, valid: &Path, test: &Path) -> Result<Self, EmbedError> {
        let mut entities = Dictionary::default();
        let mut relations = Dictionary::default();
        let mut read = |path: &Path| -> Result<Vec<[u32; 3]>, EmbedError> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| EmbedError::Io(format!("{}: {e}", path.display())))?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
                let bad = |reason: &str| {
                    EmbedError::InvalidData(format!("{}:{}: {reason}", path.display(), i + 1))
                };
                if fields.len() != 3 {
                    return Err(bad(&format!(
                        "expected head<TAB>relation<TAB>tail, found {} field(s)",
                        fields.len()
                    )));
                }
                if fields.iter().any(|f| f.is_empty()) {
                    return Err(bad("empty field"));
                }
                out.push([
                    entities.id(fields[0]),
                    relations.id(fields[1]),
                    entities.id(fields[2]),
                ]);
            }
            if out.is_empty() {
                return Err(EmbedError::InvalidData(format!(
                    "{}: no triples",
                    path.display()
                )));
            }
            Ok(out)
        };
        let train = read(train)?;
        let valid = read(valid)?;
        let test = read(test)?;
        Ok(Self {
            entities: entities.names,
            relations: relations.names,
            train,
            valid,
            test,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_and_line_of_a_bad_triple() {
        let dir = std::env::temp_dir().join(format!("souk-kg-embed-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train.txt"), "a\tr\tb\nb\tr\tc\n").unwrap();
        std::fs::write(dir.join("valid.txt"), "a\tr\tc\n").unwrap();
        std::fs::write(dir.join("test.txt"), "c\tr\td\nbroken line\n").unwrap();
        let error = Dataset::load_dir(&dir).unwrap_err().to_string();
        assert!(error.contains("test.txt:2:"), "{error}");
        std::fs::write(dir.join("test.txt"), "c\tr\td\n").unwrap();
        let ds = Dataset::load_dir(&dir).unwrap();
        assert_eq!(ds.entities, ["a", "b", "c", "d"]);
        assert_eq!(ds.test, [[2, 0, 3]]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
