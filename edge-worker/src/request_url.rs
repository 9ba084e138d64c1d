//! A request's URL as the runtime gives it (serialized, `scheme://host/path?query`): its path and query,
//! and the query's pairs, read without parsing the whole URL again.

/// The path and query of a URL as the runtime serializes it (the path never empty), without a fragment.
pub fn path_and_query(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let path = url[after_scheme..].find('/').map_or(url.len(), |at| after_scheme + at);
    let end = url[path..].find('#').map_or(url.len(), |at| path + at);
    &url[path..end]
}

/// The path alone, from [`path_and_query`]'s result.
pub fn path(path_and_query: &str) -> &str {
    path_and_query.split_once('?').map_or(path_and_query, |(path, _)| path)
}

/// The query-string pairs of a path and query, decoded.
pub fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    path_and_query.split_once('?').map_or_else(Vec::new, |(_, query)| {
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_of_serialized_urls() {
        assert_eq!(path_and_query("https://api.example.com/graphql?x=1"), "/graphql?x=1");
        assert_eq!(path_and_query("http://127.0.0.1:8787/"), "/");
        assert_eq!(path_and_query("http://127.0.0.1:8787/a/b#frag"), "/a/b");
        assert_eq!(path_and_query("http://h/graphql?q=%7B%20hello%20%7D#x"), "/graphql?q=%7B%20hello%20%7D");
        assert_eq!(path_and_query("http://h"), "");
    }

    #[test]
    fn path_without_query() {
        assert_eq!(path("/_keygate/sync?x=1"), "/_keygate/sync");
        assert_eq!(path("/graphql"), "/graphql");
    }

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            query_pairs("/graphql?query=%7B+hello+%7D&operationName=A"),
            vec![("query".into(), "{ hello }".into()), ("operationName".into(), "A".into())]
        );
        assert!(query_pairs("/graphql").is_empty());
        assert_eq!(query_pairs("/graphql?"), vec![]);
    }
}
