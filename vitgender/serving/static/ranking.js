// Shared by the server's demo page (GET /) and the browser demo in web/ (served at /static/).
// Labels come from the model's config: text, never markup (a hostile id2label must not run).
function renderRanked(result, ranked) {
  result.replaceChildren(...ranked.map(p => {
    const row = document.createElement("div"), name = document.createElement("span");
    const bar = document.createElement("div"), score = document.createElement("span");
    row.className = "row"; name.style.width = "5em"; name.textContent = p.label;
    bar.className = "bar"; bar.style.width = `${Math.round(p.score * 300)}px`;
    score.className = "score"; score.dataset.label = p.label; score.textContent = p.score.toFixed(4);
    row.append(name, bar, score);
    return row;
  }));
}
