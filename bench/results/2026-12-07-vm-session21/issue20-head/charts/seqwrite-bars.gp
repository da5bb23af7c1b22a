set terminal pngcairo size 960,540 font "sans,10"
set grid ytics
set xtics nomirror
set output "seqwrite-bars.png"

set title "seqwrite-1m-qd8: MB/s per target"
set ylabel "MB/s"
set yrange [0:*]
set style fill solid 0.8 border -1
set boxwidth 0.7
set xtics rotate by -40 left
set bmargin 7
set rmargin 10
plot "seqwrite-bars.dat" index 0 using 1:3:xtic(2) with boxes lc rgb '#2e86c1' notitle, \
     "" index 0 using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7 font ",8" notitle
