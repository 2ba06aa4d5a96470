#!/usr/bin/perl
# Save TEXT to TARGET: temp file written with print (buffered), fsync, rename, fsync the directory.
#
# usage: perl close_check.pl correct|buggy TARGET TEXT
#
# Perl's print only fills a buffer: the write(2) happens when the buffer is flushed, at the
# latest by close. So a full disk is reported by flush or close, not by print.
# Both twins then fsync the temp file (through a new descriptor), rename it over TARGET and
# fsync the directory.
# correct: `close $fh or fail(...)`: a failed flush removes the temp file and exits 1.
# buggy:   `close $fh;` with its result ignored, as in most scripts. When the disk is full the
#          flush inside close fails, nothing says so, and the empty temp file is renamed over
#          TARGET: the script exits 0 and the state is gone.
use strict;
use warnings;
use Fcntl qw(O_RDONLY O_DIRECTORY);
use File::Basename qw(dirname);
use IO::Handle;

my ($mode, $target, $text) = @ARGV;
die "usage: $0 correct|buggy TARGET TEXT\n" unless defined $text && $mode =~ /^(correct|buggy)$/;
my $tmp = "$target.tmp";
$| = 1;
print "saving $target\n";

sub fail {
    my ($what) = @_;
    my $err = "$!";
    unlink $tmp;
    die "$what: $err\n";
}

open(my $fh, '>', $tmp) or die "$tmp: $!\n";
print $fh $text or fail("write $tmp");
if ($mode eq 'buggy') {
    close $fh;    # the bug: the flush inside close failed, and nothing says so
} else {
    close $fh or fail("write $tmp");
}
# fsync the temp file through a new descriptor (fsync(2) flushes the file, whoever opened it)
sysopen(my $again, $tmp, O_RDONLY) or fail("open $tmp");
$again->sync or fail("fsync $tmp");
close $again or fail("close $tmp");
print STDERR "progress: renaming $tmp\n";
rename $tmp, $target or fail("rename $tmp");
sysopen(my $dir, dirname($target), O_RDONLY | O_DIRECTORY) or die "directory of $target: $!\n";
$dir->sync or die "fsync directory of $target: $!\n";
close $dir or die "close directory of $target: $!\n";
print "saved\n";
