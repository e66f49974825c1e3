//! Which objects name which ClusterConnections, for controllers whose cache holds only
//! metadata: the runtime's metadata cache keeps it up to date from the watch events
//! ([`crate::runtime::run_controller_cached`]) and the gate's
//! [`watch_connections_indexed`](crate::gate::watch_connections_indexed) reads it to
//! re-run the objects that name a changed connection.

/// Which objects name which ClusterConnections: kept up to date from the watch events,
/// it holds only objects that name a connection.
#[derive(Debug, Default)]
pub struct ConnectionIndex {
    inner: std::sync::Mutex<IndexInner>,
}

#[derive(Debug, Default)]
struct IndexInner {
    /// Connection name → objects (namespace, name) naming it.
    by_connection: std::collections::HashMap<String, std::collections::HashSet<(String, String)>>,
    /// Object → the connections it names.
    of_object: std::collections::HashMap<(String, String), Vec<String>>,
}

impl ConnectionIndex {
    /// Records that `object` names `connections` (none: forgets it).
    pub fn set(&self, object: &(String, String), connections: Vec<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.of_object.remove(object) {
            for c in old {
                if let Some(set) = inner.by_connection.get_mut(&c) {
                    set.remove(object);
                    if set.is_empty() {
                        inner.by_connection.remove(&c);
                    }
                }
            }
        }
        if connections.is_empty() {
            return;
        }
        for c in &connections {
            inner
                .by_connection
                .entry(c.clone())
                .or_default()
                .insert(object.clone());
        }
        inner.of_object.insert(object.clone(), connections);
    }

    /// The objects naming `connection`.
    pub fn naming(&self, connection: &str) -> Vec<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_connection
            .get(connection)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The objects in `namespace` that name a connection.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .of_object
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionIndex;

    fn key(ns: &str, name: &str) -> (String, String) {
        (ns.to_owned(), name.to_owned())
    }

    #[test]
    fn index_follows_changes_and_forgets_objects_without_connections() {
        let ix = ConnectionIndex::default();
        ix.set(&key("shop", "db"), vec!["aws".into(), "ecs".into()]);
        ix.set(&key("shop", "key"), vec!["vault".into()]);
        ix.set(&key("bank", "db"), vec!["aws".into()]);
        let mut aws = ix.naming("aws");
        aws.sort();
        assert_eq!(aws, vec![key("bank", "db"), key("shop", "db")]);
        assert_eq!(ix.in_namespace("shop").len(), 2);

        // shop/db now names only vault: it leaves aws and ecs.
        ix.set(&key("shop", "db"), vec!["vault".into()]);
        assert_eq!(ix.naming("aws"), vec![key("bank", "db")]);
        assert!(ix.naming("ecs").is_empty());
        assert_eq!(ix.naming("vault").len(), 2);

        // Deleted (or naming none): gone everywhere.
        ix.set(&key("shop", "db"), Vec::new());
        ix.set(&key("shop", "key"), Vec::new());
        assert!(ix.naming("vault").is_empty());
        assert!(ix.in_namespace("shop").is_empty());
    }
}
