// The staff UI's only script (the CSP allows no inline script): mounts asciinema-player on
// recordings ([data-cast]) and on the live Watch view ([data-stream], Server-Sent Events).
"use strict";

function mountRecordings() {
  for (const el of document.querySelectorAll("[data-cast]")) {
    const options = { fit: "width", idleTimeLimit: 2, preload: true };
    const startAt = parseFloat(el.dataset.startAt || "0");
    if (startAt > 0) options.startAt = Math.max(0, startAt - 1);
    AsciinemaPlayer.create(el.dataset.cast, el, options);
  }
}

function mountWatch() {
  for (const el of document.querySelectorAll("[data-stream]")) {
    const player = AsciinemaPlayer.create(
      { driver: "eventsource", url: el.dataset.stream, bufferTime: 0 },
      el, { fit: "width", autoPlay: true, controls: false });
    player.addEventListener("ended", () => {
      const ended = document.getElementById("watch-ended");
      if (ended) ended.hidden = false;
      const state = document.getElementById("watch-state");
      if (state) state.textContent = "ended";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (typeof AsciinemaPlayer === "undefined") {
    for (const el of document.querySelectorAll("[data-cast], [data-stream]")) {
      el.textContent = "The player is not installed on this broker (run 'make static').";
    }
    return;
  }
  mountRecordings();
  mountWatch();
});
