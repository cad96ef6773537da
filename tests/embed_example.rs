//! Runs the embedding example (`examples/embed.rs`) and checks what it produced.

#[path = "../examples/embed.rs"]
mod embed;

#[test]
fn the_embedding_example_filters_pushed_events() {
    let outcome = embed::run_example().expect("example runs");
    assert_eq!(outcome.rejected.len(), 1, "the string event is refused at push time");
    assert_eq!(outcome.rejected[0].0, 3);
    assert_eq!(outcome.filtered_in, 3);
    let ids: Vec<&str> = outcome.rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["2", "3"]);
    assert!(outcome.rows.iter().all(|r| r["result"] == "FAILURE"));
}
