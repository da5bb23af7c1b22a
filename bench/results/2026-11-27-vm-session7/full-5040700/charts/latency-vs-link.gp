set terminal pngcairo size 960,540 font "sans,10"
set grid ytics
set xtics nomirror
set output "latency-vs-link.png"

set title "4k random write, QD1: completion latency vs added link RTT (1 peer)"
set ylabel "latency (ms, log scale)"
set logscale y
set key top left
plot "latency-vs-link.dat" index 0 using 1:3:xtic(2) with linespoints lw 2 pt 7 lc rgb '#c0392b' title 'C p50', \
     "" index 1 using 1:3 with linespoints lw 1 pt 6 dt 3 lc rgb '#c0392b' title 'C p99', \
     "" index 2 using 1:3 with linespoints lw 2 pt 5 lc rgb '#2471a3' title 'A p50', \
     "" index 3 using 1:3 with linespoints lw 1 pt 4 dt 3 lc rgb '#2471a3' title 'A p99', \
     "" index 4 using 1:3 with points pt 2 ps 1.5 lc rgb 'black' title 'link RTT measured through the proxy', 0.026496 with lines dashtype 2 lc rgb 'gray40' title 'standalone p50'
