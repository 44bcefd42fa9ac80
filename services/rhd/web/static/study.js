// Live progress without reloading: poll the study's progress; once it is diagnosed, show the result.
(function () {
  const section = document.getElementById("progress");
  if (!section || section.dataset.diagnosed === "yes") return;
  const url = "/studies/" + encodeURIComponent(section.dataset.study) + "/progress.json";
  async function tick() {
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        const p = await response.json();
        document.getElementById("accounted").textContent = p.accounted;
        document.getElementById("expected").textContent = p.expected || "?";
        for (const [stage, n] of Object.entries(p.stages)) {
          const bar = document.getElementById("bar-" + stage);
          if (bar) { bar.max = p.expected || 1; bar.value = n; }
          const count = document.getElementById("count-" + stage);
          if (count) count.textContent = n;
        }
        if (p.diagnosed) { window.location.reload(); return; }
      }
    } catch (e) { /* the page keeps trying */ }
    setTimeout(tick, 1000);
  }
  setTimeout(tick, 1000);
})();
