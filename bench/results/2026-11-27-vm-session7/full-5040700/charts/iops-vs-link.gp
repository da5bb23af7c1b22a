set terminal pngcairo size 960,540 font "sans,10"
set grid ytics
set xtics nomirror
set output "iops-vs-link.png"

set title "4k random write, QD32: IOPS vs added link RTT (1 peer)"
set ylabel "IOPS"
set yrange [0:*]
set key top right
plot "iops-vs-link.dat" index 0 using 1:3:xtic(2) with linespoints lw 2 pt 7 lc rgb '#c0392b' title 'protocol C', \
     "" index 1 using 1:3 with linespoints lw 2 pt 5 lc rgb '#2471a3' title 'protocol A', 191302.139572 with lines dashtype 2 lc rgb 'gray40' title 'standalone '
