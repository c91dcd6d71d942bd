//! The README's "Embedding in a VMM" example is the one blk-factory's docs compile as a doctest.

#[test]
fn the_readme_example_is_the_doctest() {
    let readme = include_str!("../../../README.md");
    let doctest = include_str!("../src/embedding.md");
    let section = readme
        .find("## Embedding in a VMM")
        .expect("the README has an embedding section");
    let start = section
        + readme[section..]
            .find("```rust,no_run")
            .expect("the section has a no_run Rust block");
    let end = start + readme[start..].find("\n```\n").expect("the block ends") + 5;
    assert_eq!(
        &readme[start..end],
        doctest,
        "README.md and src/embedding.md differ"
    );
    assert!(!doctest.contains("unsafe"));
}
