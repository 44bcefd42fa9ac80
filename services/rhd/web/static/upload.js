// Drag and drop a study folder (or pick its files) and send it; then open the study's page.
(function () {
  const form = document.getElementById("upload");
  const drop = document.getElementById("drop");
  const status = document.getElementById("status");
  let dropped = [];

  async function entries(entry, out) {
    if (entry.isFile) {
      out.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const e of batch) await entries(e, out);
      }
    }
  }

  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = [];
    for (const item of e.dataTransfer.items) {
      const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
      if (entry) await entries(entry, files);
    }
    dropped = files;
    status.textContent = files.length + " files ready to send.";
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = new FormData();
    const picked = [...document.getElementById("files").files, ...document.getElementById("folder").files];
    for (const f of [...dropped, ...picked]) data.append("files", f, f.name);
    if (![...data.keys()].length) { status.textContent = "Pick or drop a study first."; return; }
    status.textContent = "Sending...";
    const response = await fetch("/upload", { method: "POST", body: data, credentials: "same-origin" });
    if (response.ok) {
      const answer = await response.json();
      status.textContent = "Sent: study " + answer.study_id + ". Opening its page...";
      window.location.assign(answer.page);
    } else {
      status.textContent = "Not sent: " + (await response.text());
    }
  });
})();
