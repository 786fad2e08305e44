use super::*;

/// A filter/prioritize body with candidate names, in the scheduler's
/// field spelling.
const NAMES: &str = include_str!("../../tests/fixtures/extender/args-node-names.json");
/// One with whole Node objects, in lower-case spelling.
const NODES: &str = include_str!("../../tests/fixtures/extender/args-nodes.json");

fn cache(live: bool, bytes: u64) -> NodeCache {
    NodeCache { live, bytes }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

#[test]
fn requests_name_their_candidates_and_the_pods_claims() {
    let request = Request::parse(NAMES.as_bytes()).expect("parse");
    assert_eq!(
        request.candidates(),
        names(&["worker-a", "worker-b", "worker-c"])
    );
    let claims: Vec<(String, String)> = request
        .claims()
        .into_iter()
        .map(|c| (c.namespace, c.name))
        .collect();
    // Claims and the generic ephemeral volume's claim; not the config
    // map, the token, nor a name that is no object name.
    assert_eq!(
        claims,
        [
            ("ml".to_string(), "checkpoints".to_string()),
            ("ml".to_string(), "train-data".to_string()),
            ("ml".to_string(), "trainer-0-scratch".to_string()),
        ]
    );
    let request = Request::parse(NODES.as_bytes()).expect("parse");
    assert_eq!(request.candidates(), names(&["worker-a", "worker-b"]));
    assert_eq!(request.claims().len(), 1);
}

#[test]
fn malformed_requests_are_refused_with_the_reason() {
    for (body, why) in [
        ("", "EOF"),
        ("[]", "no Pod"),
        (r#"{"Pod": {}}"#, "neither Nodes nor NodeNames"),
        (r#"{"Pod": {}, "NodeNames": [1]}"#, "NodeNames"),
    ] {
        let err = Request::parse(body.as_bytes()).expect_err(body);
        assert!(err.to_string().contains(why), "{body}: {err}");
    }
}

#[test]
fn nodes_caching_more_of_the_pods_data_score_higher() {
    let candidates = names(&["worker-a", "worker-b", "worker-c", "worker-d"]);
    let nodes = BTreeMap::from([
        ("worker-a".to_string(), cache(true, 300 << 20)),
        ("worker-b".to_string(), cache(true, 1 << 30)),
        ("worker-c".to_string(), cache(true, 1)),
        ("elsewhere".to_string(), cache(true, 5 << 30)),
    ]);
    let scored = scores(&candidates, &nodes);
    assert_eq!(
        scored,
        [
            ("worker-a".to_string(), 3),
            ("worker-b".to_string(), 10),
            ("worker-c".to_string(), 1),
            ("worker-d".to_string(), 0),
        ],
        "the most 10, the rest in proportion rounded up, unknown nodes 0; a node not among the candidates counts for nothing"
    );
    let json = scores_json(&scored);
    assert_eq!(
        json[1],
        serde_json::json!({"Host": "worker-b", "Score": 10})
    );
}

#[test]
fn unknown_volumes_and_empty_caches_score_neutral() {
    let candidates = names(&["worker-a", "worker-b"]);
    for nodes in [
        BTreeMap::new(),
        BTreeMap::from([("worker-a".to_string(), cache(true, 0))]),
    ] {
        let scored = scores(&candidates, &nodes);
        assert!(scored.iter().all(|(_, score)| *score == 0), "{scored:?}");
    }
    let huge = BTreeMap::from([
        ("worker-a".to_string(), cache(true, u64::MAX)),
        ("worker-b".to_string(), cache(true, u64::MAX / 2)),
    ]);
    assert_eq!(
        scores(&candidates, &huge),
        [("worker-a".to_string(), 10), ("worker-b".to_string(), 5)]
    );
}

#[test]
fn the_filter_drops_nodes_whose_daemon_is_dead_in_the_form_they_came() {
    let nodes = BTreeMap::from([
        ("worker-a".to_string(), cache(true, 0)),
        ("worker-b".to_string(), cache(false, 1 << 30)),
    ]);
    let request = Request::parse(NAMES.as_bytes()).expect("parse");
    let failed = failed_nodes(&request.candidates(), &nodes);
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["worker-b"]);
    let result = request.filter_result(&failed);
    assert_eq!(
        result["NodeNames"],
        serde_json::json!(["worker-a", "worker-c"]),
        "a node the masters do not know (no DatenLord there yet) passes"
    );
    assert!(result["FailedNodes"]["worker-b"]
        .as_str()
        .is_some_and(|why| why.contains("not live")));
    assert_eq!(result["Error"], "");
    assert!(result.get("Nodes").is_none());

    let request = Request::parse(NODES.as_bytes()).expect("parse");
    let result = request.filter_result(&failed_nodes(&request.candidates(), &nodes));
    let kept: Vec<&str> = result["Nodes"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(kept, ["worker-a"]);
    assert_eq!(
        result["Nodes"]["metadata"]["resourceVersion"], "4711",
        "the list's own fields are kept"
    );
    assert_eq!(
        result["Nodes"]["items"][0]["status"]["allocatable"]["cpu"], "8",
        "whole Node objects"
    );
}

#[test]
fn persistent_volumes_of_other_drivers_are_not_ours() {
    let pv = |driver: &str, handle: &str| serde_json::json!({"spec": {"csi": {"driver": driver, "volumeHandle": handle}}});
    assert_eq!(
        kube::datenlord_volume(&pv(crate::DRIVER_NAME, "pvc-1")),
        Some("pvc-1".to_string())
    );
    assert_eq!(
        kube::datenlord_volume(&pv("ebs.csi.aws.com", "vol-1")),
        None
    );
    assert_eq!(kube::datenlord_volume(&pv(crate::DRIVER_NAME, "")), None);
    assert_eq!(
        kube::datenlord_volume(&serde_json::json!({"spec": {"hostPath": {"path": "/x"}}})),
        None
    );
    for good in ["a", "pvc-0b1e", "x.y-z"] {
        assert!(kube::is_object_name(good), "{good}");
    }
    for bad in ["", "A", "a/b", "..", "-a", "a-", &"a".repeat(254)] {
        assert!(!kube::is_object_name(bad), "{bad}");
    }
}
