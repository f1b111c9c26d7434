// While a page shows a notification that has not ended, ask the server for the page's main part again every few
// seconds and put it in place; stop once nothing shown is still under way (the server says so).
(function () {
  "use strict";
  const main = document.getElementById("main");
  if (!main || !main.dataset.live) return;
  const every = Number(main.dataset.live) * 1000;

  async function refresh() {
    let response;
    try {
      response = await fetch(window.location.href, {
        headers: { "X-Notify-Part": "main" },
        credentials: "same-origin",
        redirect: "error",
        cache: "no-store",
      });
    } catch (error) {
      window.setTimeout(refresh, every * 2); // the server is away: try again, less often
      return;
    }
    if (!response.ok) return; // signed out, or gone: a reload will say why
    main.innerHTML = await response.text();
    if (response.headers.get("X-Notify-Live") === "1") window.setTimeout(refresh, every);
    else delete main.dataset.live;
  }

  window.setTimeout(refresh, every);
})();
