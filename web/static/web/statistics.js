// Charts of the statistics page (Chart.js, bundled as a static file: no CDN).
document.addEventListener("DOMContentLoaded", () => {
  const palette = ["#2563eb", "#0d9488", "#d97706", "#7c3aed", "#dc2626", "#0891b2", "#65a30d", "#db2777"];
  const labels = document.getElementById("chart-labels").dataset;
  const turnaround = JSON.parse(document.getElementById("turnaround-data").textContent);
  new Chart(document.getElementById("turnaround-chart"), {
    type: "line",
    data: {
      labels: turnaround.labels,
      datasets: [
        { label: labels.orderToScan, data: turnaround.order_to_scan, borderColor: palette[0], backgroundColor: palette[0], spanGaps: true },
        { label: labels.scanToFinal, data: turnaround.scan_to_final, borderColor: palette[1], backgroundColor: palette[1], spanGaps: true },
      ],
    },
    options: { animation: false, scales: { y: { beginAtZero: true, title: { display: true, text: "min" } } } },
  });
  const volumes = JSON.parse(document.getElementById("volume-data").textContent);
  new Chart(document.getElementById("volume-chart"), {
    type: "bar",
    data: {
      labels: volumes.labels,
      datasets: volumes.rooms.map((r, i) => ({ label: r.room, data: r.counts, backgroundColor: palette[i % palette.length] })),
    },
    options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } },
  });
});
